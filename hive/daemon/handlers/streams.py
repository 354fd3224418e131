"""Logs (a batch or a live stream), service updates, and stream control."""

from __future__ import annotations

import anyio
import msgspec

from hive_client import LogLevel, fqn_matches
from hive_client.protocol import (
    GetLogs,
    LogBatch,
    LogLineItem,
    Ok,
    ServiceUpdate,
    StopLogStream,
    StopStream,
    StreamLogs,
    SubscribeServices,
)

from ..dispatch import RequestContext, StreamSink, relay
from ..errors import RequestError

# Keep a batch well under the clients' frame limit, whatever the lines hold.
MAX_BATCH_BYTES = 6 * 1024 * 1024
MAX_BATCH_LINES = 50_000
_SERVICE_EVENTS = [
    "service_state_changed",
    "service_health_changed",
    "service_started",
    "service_stopped",
    "service_crashed",
    "service_exited",
    "service_restarting",
]


def _level(text: str | None) -> LogLevel | None:
    if text is None:
        return None
    try:
        return LogLevel.parse(text)
    except ValueError as exc:
        raise RequestError.invalid(str(exc)) from None


async def stop_stream(ctx: RequestContext, request: StopStream | StopLogStream) -> Ok:
    if not ctx.connection.cancel_stream(request.stream_id):
        raise RequestError.not_found(f"no stream {request.stream_id} on this connection")
    return Ok(message=f"stream {request.stream_id} stopped")


async def get_logs(ctx: RequestContext, request: GetLogs) -> LogBatch:
    if request.lines is not None and request.lines < 0:
        raise RequestError.invalid("lines must be 0 or more")
    lines = min(request.lines, MAX_BATCH_LINES) if request.lines is not None else MAX_BATCH_LINES
    logs = ctx.app.logs.query(request.fqn, lines, request.since, _level(request.level))
    # Trim the oldest lines until the answer fits in one frame.
    size = sum(len(line.message) + 100 for line in logs)
    start = 0
    while size > MAX_BATCH_BYTES and start < len(logs):
        size -= len(logs[start].message) + 100
        start += 1
    return LogBatch(logs=logs[start:])


async def stream_logs(ctx: RequestContext, request: StreamLogs, sink: StreamSink) -> None:
    level = _level(request.level)
    with ctx.app.logs.subscribe(request.fqn, level, max(request.tail, 0)) as subscription:
        await relay(sink, subscription, lambda line: LogLineItem(stream_id=sink.stream_id, line=line))


async def subscribe_services(ctx: RequestContext, request: SubscribeServices, sink: StreamSink) -> None:
    supervisor = ctx.app.services
    pattern = f"{request.source}:*" if request.source else None
    if request.source is not None:
        ctx.app.sources.get(request.source)
    with ctx.app.bus.subscribe(_SERVICE_EVENTS, pattern) as subscription:
        if not await sink.start():
            return
        last: dict[str, bytes] = {}
        for instance in supervisor.all_records():
            if fqn_matches(pattern, instance.fqn):
                info = supervisor.info(instance)
                last[instance.fqn] = msgspec.msgpack.encode(info)
                if not await sink.send(ServiceUpdate(stream_id=sink.stream_id, service=info)):
                    return
        while True:
            try:
                event = await subscription.get()
            except anyio.EndOfStream:
                return
            fqn = getattr(event, "fqn", None)
            instance = next((i for i in supervisor.all_records() if i.fqn == fqn), None)
            if instance is None:
                continue
            info = supervisor.info(instance)
            encoded = msgspec.msgpack.encode(info)
            if last.get(fqn) == encoded:
                continue  # several events for one change: send the state once
            last[fqn] = encoded
            if not await sink.send(ServiceUpdate(stream_id=sink.stream_id, service=info)):
                return
