"""The fleet core plugin: many hives as one, on etcd (docs/fleet.md)."""

from __future__ import annotations

from .model import FleetService, FleetSettings
from .plugin import Fleet

__all__ = ["Fleet", "FleetService", "FleetSettings"]
