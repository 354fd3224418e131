"""Hive's shapes for the JSON-lines transport.

JSON lines exists so that Hive's own clients keep working, so what goes out on it has
the tags, field names and types of Hive's client library (``lib-hive-daemon-client``).
The binary protocol keeps the richer shapes; this module turns one into the other, just
before a message is encoded. Our fields beyond Hive's stay (serde ignores unknown
fields), except where Hive names the same thing differently.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec

from hive_client import ExposedInfo, SourceInfo
from hive_client.protocol import (
    ExposedList,
    LogLineItem,
    LogStream,
    Ok,
    ReloadPlan,
    Response,
    SourceList,
)

__all__ = ["hive_shape", "new_stream_id", "stream_key"]


class HiveSource(msgspec.Struct, kw_only=True):
    name: str
    path: str
    source_type: str
    enabled: bool
    service_count: int
    # "loaded" | "running" | "stopped", or {"error": why} (serde's shape of Error(String))
    status: str | dict[str, str]
    error: str | None = None


class HiveSources(Response, tag="sources"):
    sources: list[HiveSource]


class HiveExposed(msgspec.Struct, kw_only=True):
    name: str
    source: str
    service: str
    healthy: bool
    var_names: list[str]
    port_names: list[str]
    has_secret: bool = False
    consumers: list[str] = []


class HiveExposedList(Response, tag="exposed"):
    exposed: list[HiveExposed]


def _source(info: SourceInfo) -> HiveSource:
    status: str | dict[str, str] = info.status
    if info.status == "error":
        status = {"error": info.error or "the source failed to load"}
    return HiveSource(
        name=info.name, path=info.path, source_type=info.source_type, enabled=info.enabled,
        service_count=info.service_count, status=status, error=info.error,
    )


def _exposed(info: ExposedInfo) -> HiveExposed:
    return HiveExposed(
        name=info.name, source=info.source, service=info.service, healthy=bool(info.healthy),
        var_names=info.vars, port_names=info.port_names, has_secret=info.has_secret,
        consumers=info.consumers,
    )


def _reload_plan(plan: ReloadPlan) -> Response:
    if not plan.applied:
        return plan  # a dry run (ours only): the plan is the answer
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("started", plan.start), ("stopped", plan.stop), ("restarted", plan.restart)) if names]
    return Ok(message=f"source {plan.name} reloaded" + (f": {'; '.join(parts)}" if parts else ", nothing changed"))


def _sources(message: Response) -> Response:
    assert isinstance(message, SourceList)
    return HiveSources(sources=[_source(s) for s in message.sources])


def _exposed_list(message: Response) -> Response:
    assert isinstance(message, ExposedList)
    return HiveExposedList(exposed=[_exposed(e) for e in message.exposed])


def _plan(message: Response) -> Response:
    assert isinstance(message, ReloadPlan)
    return _reload_plan(message)


def _log_line(message: Response) -> Response:
    assert isinstance(message, LogLineItem)
    return LogStream(stream_id=message.stream_id, line=message.line)


_SHAPES: dict[type[Response], Callable[[Response], Response]] = {
    SourceList: _sources,
    ExposedList: _exposed_list,
    ReloadPlan: _plan,
    LogLineItem: _log_line,
}


def hive_shape(message: Response) -> Response:
    """``message`` as Hive's client reads it (most messages already are)."""
    shape = _SHAPES.get(type(message))
    return message if shape is None else shape(message)


def new_stream_id() -> str:
    """A stream id: a UUID, written hyphenated, as Hive's clients parse it."""
    return str(uuid.uuid4())


def stream_key(text: str) -> str:
    """The stream id ``text`` names, in any of the forms a UUID is written in (Hive's
    client sends back the hyphenated form; it accepts the plain hex one)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text
