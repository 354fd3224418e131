"""What every connection of the proxy shares: the settings, the route table, the
instances' addresses, the pool, and the 502/503 report."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..settings import ProxySection
from .pages import ServiceReport
from .routes import RouteTable
from .upstream import Pool
from .upstreams import Upstreams

if TYPE_CHECKING:
    from ..supervision import ServiceRuntime
    from .client import ClientConnection

__all__ = ["ProxyCore"]


@dataclass
class ProxyCore:
    settings: ProxySection
    upstreams: Upstreams
    report: Callable[[str, ServiceRuntime | None], ServiceReport]
    # Replaced whole on a change (one reference swap): a matched request keeps its route.
    table: RouteTable = field(default_factory=RouteTable)
    pool: Pool = field(default_factory=Pool)
    connections: set[ClientConnection] = field(default_factory=set)
    # Set when the last connection closes, if someone (a drain) waits for that.
    all_closed: asyncio.Event | None = None
