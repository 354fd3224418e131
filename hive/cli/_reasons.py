"""Why a service is where it is, in words: shared by `hive up` and `hive services`.

The daemon says what an instance waits for (``waiting for proj:db``) and why a start
failed; what the awaited service is doing (unhealthy, and its check's last message) is
found here from the same listing, so one request answers both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from hive_client import ServiceInfo

__all__ = ["Verdict", "reason", "verdict"]

Verdict = Literal["up", "failed", "pending"]

_FAILED_STATES = ("crashed", "port_conflict", "error")
_WAITING = "waiting for "


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


def _failing_check(info: ServiceInfo) -> str:
    for check in info.health_checks:
        if check.healthy is False:
            return f"{check.kind} check: {check.message}".rstrip(": ") if check.message else f"{check.kind} check failed"
    return ""


def _awaited(info: ServiceInfo, services: Mapping[str, ServiceInfo]) -> str:
    """What the service a ``waiting for X`` names is doing, in parentheses."""
    assert info.last_error is not None
    target = info.last_error.removeprefix(_WAITING).split(" ", 1)[0]
    other = services.get(target)
    if other is None:
        return ""
    if other.healthy is False or other.state == "unhealthy":
        check = _failing_check(other)
        return f" (unhealthy: {check})" if check else " (unhealthy)"
    if other.state == "running":
        return " (its health checks have not passed yet)" if other.health_checks else ""
    detail = f": {other.last_error}" if other.last_error else ""
    return f" ({other.state}{detail})"


def reason(info: ServiceInfo, services: Mapping[str, ServiceInfo]) -> str:
    """Why ``info`` is not simply running; "" when it is."""
    if info.state == "running" and info.healthy is not False:
        return ""
    if info.last_error and info.last_error.startswith(_WAITING):
        return info.last_error + _awaited(info, services)
    if info.healthy is False or info.state == "unhealthy":
        check = _failing_check(info)
        return f"unhealthy: {check}" if check else "unhealthy"
    if info.last_error:
        return info.last_error
    if info.state == "exited":
        return f"exited with code {info.exit_code or 0}"
    if info.state == "stopped":
        return "not asked to run (`hive service start` starts it)" if info.desired == "stopped" else "stopped"
    if info.state == "backoff":
        return "waiting to restart"
    if info.state == "unknown":
        return "its container engine does not answer"
    return info.state
