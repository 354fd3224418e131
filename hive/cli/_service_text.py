"""Services in words, on the standard library alone: rows, fields and reasons.

Both CLI paths print through these: the lean one (:mod:`._lean`) straight from the
daemon's JSON lines, the full one from ``msgspec.to_builtins`` of its structs. One
copy, so ``hive services`` and ``hive service status`` print the same either way.
A service here is the JSON shape of ``hive_client.ServiceInfo`` (a dict).
"""

from __future__ import annotations

from ._lean import format_duration

# typing costs a few milliseconds to import; the checker alone needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    Service = Mapping[str, Any]

__all__ = [
    "NO_SERVICES",
    "SERVICE_COLUMNS",
    "plain_fields",
    "plain_table",
    "reason",
    "reason_lines",
    "service_fields",
    "service_rows",
    "uptime",
]

SERVICE_COLUMNS = ("SERVICE", "STATE", "HEALTH", "PID", "PORTS", "RESTARTS", "UPTIME")
NO_SERVICES = "no services (add a project with `hive up PATH`)"
_WAITING = "waiting for "


def uptime(info: Service, since: float = 0.0) -> str:
    """The uptime the daemon measured on its monotonic clock (plus ``since``, seconds
    passed here since it answered); from the start time for a daemon that sends none."""
    seconds = info.get("uptime_secs")
    if seconds is not None:
        return format_duration(seconds + since)
    started = info.get("started_at")
    if started is None:
        return "-"
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(started) if isinstance(started, str) else started
    return format_duration(max(0.0, (datetime.now(UTC) - moment).total_seconds()))


def _ports(info: Service) -> str:
    return ",".join(f"{name}={port}" for name, port in sorted(info.get("ports", {}).items())) or "-"


def _health(info: Service) -> str:
    healthy = info.get("healthy")
    if healthy is None:
        return "-"
    return "healthy" if healthy else "unhealthy"


def _name(info: Service) -> str:
    """The instance's name; a blue-green one's generation and colour beside it (both
    generations are listed during a rollout)."""
    generation = info.get("generation")
    return f"{info['fqn']} [{generation} {info.get('color')}]" if generation is not None else str(info["fqn"])


def service_rows(services: Sequence[Service]) -> list[list[str]]:
    """The cells of ``hive services``, one row per instance (SERVICE_COLUMNS)."""
    return [
        [
            _name(s),
            s["state"],
            _health(s),
            str(s["pid"]) if s.get("pid") else "-",
            _ports(s),
            str(s.get("restart_count", 0)),
            uptime(s) if s["state"] in ("running", "unhealthy") else "-",
        ]
        for s in services
    ]


def reason_lines(services: Sequence[Service]) -> list[tuple[str, bool]]:
    """``  fqn: why`` under the table for each instance not simply running, and whether
    it is quiet (dim: stopped as asked) rather than a failure (red)."""
    by_fqn = {s["fqn"]: s for s in services}
    lines = []
    for s in services:
        why = reason(s, by_fqn.get)
        if why:
            lines.append((f"  {s['fqn']}: {why}", s["state"] == "stopped" and not s.get("last_error")))
    return lines


def service_fields(info: Service) -> list[tuple[str, str]]:
    """The ``key value`` lines of ``hive service status``."""
    desired = info.get("desired")
    rows = [
        ("state", info["state"] + (f" (wanted: {desired})" if desired else "")),
        ("health", _health(info)),
        ("runner", info.get("runner", "")),
        ("pid", str(info["pid"]) if info.get("pid") else "-"),
        ("ports", _ports(info)),
        ("restarts", str(info.get("restart_count", 0))),
        ("uptime", uptime(info) if info.get("pid") else "-"),
    ]
    if info.get("exit_code") is not None:
        rows.append(("last exit", str(info["exit_code"])))
    if info.get("last_error"):
        rows.append(("error", info["last_error"]))
    for check in info.get("health_checks", ()):
        healthy = check.get("healthy")
        verdict = "-" if healthy is None else ("pass" if healthy else "FAIL")
        rows.append((f"check {check['kind']}", f"{verdict} {check.get('target', '')} {check.get('message', '')}".rstrip()))
    return rows


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart (what a pipe gets)."""
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(out) + "\n"


def plain_fields(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A title, then ``  key  value`` lines with the keys padded to one width."""
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join([title] + [f"  {key.ljust(width)}  {value}" for key, value in rows]) + "\n"


# --- why a service is where it is ---------------------------------------------------------


def _failing_check(info: Service) -> str:
    for check in info.get("health_checks", ()):
        if check.get("healthy") is False:
            message = check.get("message")
            return f"{check['kind']} check: {message}".rstrip(": ") if message else f"{check['kind']} check failed"
    return ""


def _awaited(info: Service, lookup: Callable[[str], Service | None]) -> str:
    """What the service a ``waiting for X`` names is doing, in parentheses."""
    target = str(info["last_error"]).removeprefix(_WAITING).split(" ", 1)[0]
    other = lookup(target)
    if other is None:
        return ""
    if other.get("healthy") is False or other["state"] == "unhealthy":
        check = _failing_check(other)
        return f" (unhealthy: {check})" if check else " (unhealthy)"
    if other["state"] == "running":
        return " (its health checks have not passed yet)" if other.get("health_checks") else ""
    detail = f": {other['last_error']}" if other.get("last_error") else ""
    return f" ({other['state']}{detail})"


def reason(info: Service, lookup: Callable[[str], Service | None]) -> str:
    """Why ``info`` is not simply running ("" when it is); ``lookup`` finds another
    service by fqn (the one a ``waiting for X`` names)."""
    state, healthy, last_error = info["state"], info.get("healthy"), info.get("last_error")
    if state == "running" and healthy is not False:
        return ""
    if last_error and last_error.startswith(_WAITING):
        return str(last_error) + _awaited(info, lookup)
    if healthy is False or state == "unhealthy":
        check = _failing_check(info)
        return f"unhealthy: {check}" if check else "unhealthy"
    if last_error:
        return str(last_error)
    if state == "exited":
        return f"exited with code {info.get('exit_code') or 0}"
    if state == "stopped":
        return "not asked to run (`hive service start` starts it)" if info.get("desired") == "stopped" else "stopped"
    if state == "backoff":
        return "waiting to restart"
    if state == "unknown":
        return "its container engine does not answer"
    return str(state)
