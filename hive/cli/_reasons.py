"""Why a service is where it is, in words: shared by `hive up` and `hive services`.

The daemon says what an instance waits for (``waiting for proj:db``) and why a start
failed; what the awaited service is doing (unhealthy, and its check's last message) is
found here from the same listing, so one request answers both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from hive_client import ServiceInfo

from ._service_text import reason as service_reason

__all__ = ["Verdict", "reason", "verdict"]

Verdict = Literal["up", "failed", "pending"]

_FAILED_STATES = ("crashed", "port_conflict", "error")


def verdict(info: ServiceInfo) -> Verdict:
    """``up``: running (healthy when it has checks), or done with success; ``failed``:
    will not come up without another command; ``pending``: on its way (or retrying)."""
    if info.state == "running" and info.healthy is not False:
        return "up"
    if info.state == "exited" and not info.exit_code:
        return "up"
    if info.state in _FAILED_STATES or info.state == "exited":
        return "failed"
    if info.state == "stopped" and info.desired == "running" and info.last_error:
        return "failed"
    return "pending"


def reason(info: ServiceInfo, services: Mapping[str, ServiceInfo]) -> str:
    """Why ``info`` is not simply running; "" when it is (in words the lean CLI shares)."""

    def lookup(fqn: str) -> dict[str, Any] | None:
        other = services.get(fqn)
        return None if other is None else msgspec.to_builtins(other)

    return service_reason(msgspec.to_builtins(info), lookup)
