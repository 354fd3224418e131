"""The proxy's own answers: 404, 413, 431, 408, 504, and the 502/503 page.

When a service cannot answer (503: no instance is up; 502: none could be reached, or one
broke off), the page says what the service is doing and shows its last log lines, so the
person at the browser or the script reading JSON sees why without opening a terminal.
``Accept: application/json`` gets JSON; anything else plain text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from ..logs import LogHub
    from ..supervision import ServiceRuntime

__all__ = ["ServiceReport", "render", "response_bytes", "service_report", "wants_json"]

_JSON = msgspec.json.Encoder()


@dataclass
class ServiceReport:
    fqn: str
    desired: str = ""
    instances: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    exists: bool = True


def service_report(fqn: str, service: ServiceRuntime | None, logs: LogHub, lines: int) -> ServiceReport:
    if service is None:
        return ServiceReport(fqn=fqn, exists=False)
    instances = [
        {
            "fqn": instance.fqn,
            "state": str(instance.state),
            "healthy": instance.healthy,
            "exit_code": instance.exit_code,
            "last_error": instance.last_error,
        }
        for instance in service.wanted() or service.instances[:1]
    ]
    shown = [
        f"{line.timestamp:%H:%M:%S} {line.service_fqn} {line.stream}: {line.message}"
        for line in (logs.query(fqn, lines=lines) if lines > 0 else [])
    ]
    return ServiceReport(fqn=fqn, desired=service.desired, instances=instances, logs=shown)


def wants_json(accept: str) -> bool:
    return "application/json" in accept or "+json" in accept


def render(status: int, message: str, report: ServiceReport | None, as_json: bool) -> tuple[bytes, bytes]:
    """The body and its content type."""
    if as_json:
        document: dict[str, Any] = {"status": status, "error": message}
        if report is not None:
            document["service"] = {
                "fqn": report.fqn, "exists": report.exists, "desired": report.desired,
                "instances": report.instances, "logs": report.logs,
            }
        return _JSON.encode(document) + b"\n", b"application/json"
    text = [f"{status} {_reason(status)}: {message}"]
    if report is not None:
        if not report.exists:
            text.append(f"service {report.fqn}: not known to hive (removed, or not added yet)")
        else:
            text.append(f"service {report.fqn} (wanted: {report.desired})")
            for instance in report.instances:
                health = {True: "healthy", False: "unhealthy", None: ""}[instance["healthy"]]
                detail = instance["last_error"] or (
                    f"exit code {instance['exit_code']}" if instance["exit_code"] is not None else ""
                )
                text.append("  " + "  ".join(p for p in (instance["fqn"], instance["state"], health, detail) if p))
            if report.logs:
                text.append("last log lines:")
                text.extend("  " + line for line in report.logs)
            text.append(f"next: `hive logs {report.fqn}` and `hive services` show more")
    return ("\n".join(text) + "\n").encode(), b"text/plain; charset=utf-8"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def response_bytes(status: int, body: bytes, content_type: bytes, *, keep_alive: bool,
                   extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response from the proxy itself."""
    connection = b"keep-alive" if keep_alive else b"close"
    if status == 204:  # no body, and no length either (RFC 9110 §8.6)
        return b"HTTP/1.1 204 No Content\r\nconnection: %b\r\n%b\r\n" % (connection, extra)
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _reason(status).encode()),
        b"content-type: ", content_type, b"\r\ncontent-length: %d\r\n" % len(body),
        b"connection: ", connection, b"\r\ncache-control: no-store\r\n", extra, b"\r\n", body,
    ))
