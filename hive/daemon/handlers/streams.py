"""Logs (a batch or a live stream), service updates, and stream control."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import msgspec

from hive_client import DaemonEvent, LogLevel, LogLine, fqn_matches
from hive_client.protocol import (
    GetLogs,
    LogBatch,
    LogLineItem,
    Ok,
    Response,
    ServiceStatusUpdate,
    ServiceUpdate,
    StopLogStream,
    StopServiceStream,
    StopStream,
    StreamEnded,
    StreamLogs,
    SubscribeServices,
)

from ..dispatch import RequestContext, StreamSink, relay
from ..drop_oldest_queue import DropOldestQueue
from ..errors import RequestError
from ..json_lines import stream_key
from ..supervision import InstanceRuntime

# Keep a batch well under the clients' frame limit, whatever the lines hold.
MAX_BATCH_BYTES = 6 * 1024 * 1024
MAX_BATCH_LINES = 50_000
# The longest FQN has 264 characters. fnmatch compiles a pattern into a regex on the
# event loop, seconds for a megabyte one, and caches thousands of them: bound it.
MAX_PATTERN = 512
_SERVICE_EVENTS = [
    "service_state_changed",
    "service_health_changed",
    "service_started",
    "service_stopped",
    "service_crashed",
    "service_exited",
    "service_restarting",
    "service_waiting",
]


def fqn_pattern(text: str | None) -> str | None:
    """``text`` if it is a pattern worth matching; RequestError otherwise."""
    if text is not None and len(text) > MAX_PATTERN:
        raise RequestError.invalid(f"fqn pattern is longer than {MAX_PATTERN} characters")
    return text


def _level(text: str | None) -> LogLevel | None:
    if text is None:
        return None
    try:
        return LogLevel.parse(text)
    except ValueError as exc:
        raise RequestError.invalid(str(exc)) from None


async def stop_stream(ctx: RequestContext, request: StopStream) -> Ok:
    if not ctx.connection.cancel_stream(request.stream_id):
        raise RequestError.not_found(f"no stream {request.stream_id} on this connection")
    return Ok(message=f"stream {request.stream_id} stopped")


async def stop_hive_stream(ctx: RequestContext, request: StopLogStream | StopServiceStream) -> StreamEnded:
    """Hive's stop: the answer is the stream's own ``stream_ended``."""
    if not ctx.connection.cancel_stream(request.stream_id, answered=True):
        raise RequestError.not_found(f"no stream {request.stream_id} on this connection")
    return StreamEnded(stream_id=stream_key(request.stream_id), reason="stopped")


async def get_logs(ctx: RequestContext, request: GetLogs) -> LogBatch:
    if request.lines is not None and request.lines < 0:
        raise RequestError.invalid("lines must be 0 or more")
    lines = min(request.lines, MAX_BATCH_LINES) if request.lines is not None else MAX_BATCH_LINES
    logs = ctx.app.logs.query(fqn_pattern(request.fqn), lines, request.since, _level(request.level))
    # Keep the newest lines that fit in one frame (counted from the end: only what is kept).
    size = 0
    start = len(logs)
    while start and size + len(logs[start - 1].message) + 100 <= MAX_BATCH_BYTES:
        start -= 1
        size += len(logs[start].message) + 100
    return LogBatch(logs=logs[start:])


async def stream_logs(ctx: RequestContext, request: StreamLogs, sink: StreamSink) -> None:
    level = _level(request.level)
    # Hive's clients know no stream_lagged: they are told in a line of the stream.
    lagged = _lag_line(sink.stream_id, request.fqn) if ctx.connection.json else None
    tail = min(max(request.tail, 0), ctx.app.settings.logs.buffer_lines)
    queue_bytes = ctx.app.settings.daemon.stream_queue_bytes
    with ctx.app.logs.subscribe(fqn_pattern(request.fqn), level, tail, max_bytes=queue_bytes,
                                account=ctx.connection.backlog) as subscription:
        await relay(sink, subscription, lambda line: LogLineItem(stream_id=sink.stream_id, line=line), lagged)


def _lag_line(stream_id: str, pattern: str | None) -> Callable[[int], Response]:
    def item(dropped: int) -> Response:
        return LogLineItem(stream_id=stream_id, line=LogLine(
            timestamp=datetime.now(UTC), level="warn", service_fqn=pattern or "*", stream="hive",
            message=f"{dropped} log lines dropped: this reader fell behind",
        ))

    return item


async def subscribe_services(ctx: RequestContext, request: SubscribeServices, sink: StreamSink) -> None:
    supervisor = ctx.app.services
    pattern = f"{request.source}:*" if request.source else None
    if request.source is not None:
        ctx.app.sources.get(request.source)
    with ctx.app.bus.subscribe(_SERVICE_EVENTS, pattern) as subscription:
        if not await sink.start():
            return
        if ctx.connection.json:
            await _service_snapshots(ctx, request.source, subscription, sink)
            return
        last: dict[str, bytes] = {}

        async def send_if_changed(instance: InstanceRuntime) -> bool:
            info = supervisor.info(instance)
            encoded = msgspec.msgpack.encode(info)
            if last.get(instance.fqn) == encoded:
                return True  # several events for one change: send the state once
            last[instance.fqn] = encoded
            return await sink.send(ServiceUpdate(stream_id=sink.stream_id, service=info))

        async def send_all() -> bool:
            for instance in supervisor.all_records():
                if fqn_matches(pattern, instance.fqn) and not await send_if_changed(instance):
                    return False
            return True

        if not await send_all():
            return
        while True:
            try:
                event = await subscription.get()
            except anyio.EndOfStream:
                return
            if subscription.take_dropped():
                # A burst (1,000 services starting) overflowed the queue: the events lost
                # may have been the last change of some services, so send every current
                # state that differs from what this watcher was last told.
                if not await send_all():
                    return
                continue
            fqn = getattr(event, "fqn", None)
            instance = supervisor.find_instance(fqn) if fqn else None
            if instance is not None and not await send_if_changed(instance):
                return


async def _service_snapshots(ctx: RequestContext, source: str | None,
                             subscription: DropOldestQueue[DaemonEvent], sink: StreamSink) -> None:
    """Hive's service stream: every watched service as it is now, at the start and after
    each change. Changes that queued up meanwhile are answered by one snapshot."""
    supervisor = ctx.app.services
    while True:
        services = [supervisor.info(instance) for instance in supervisor.in_order(source)]
        if not await sink.send(ServiceStatusUpdate(stream_id=sink.stream_id, services=services)):
            return
        try:
            await subscription.get()
            while True:
                subscription.get_nowait()
        except anyio.WouldBlock:
            subscription.take_dropped()
        except anyio.EndOfStream:
            return
