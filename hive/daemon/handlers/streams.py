"""Logs and stream control."""

from __future__ import annotations

from typing import Any

from hive_client.protocol import Ok, StopLogStream, StopStream

from ..dispatch import RequestContext, StreamSink
from ..errors import RequestError
from .sources import _unsupported


async def stop_stream(ctx: RequestContext, request: StopStream | StopLogStream) -> Ok:
    if not ctx.connection.cancel_stream(request.stream_id):
        raise RequestError.not_found(f"no stream {request.stream_id} on this connection")
    return Ok(message=f"stream {request.stream_id} stopped")


get_logs = _unsupported


async def stream_logs(ctx: RequestContext, request: Any, sink: StreamSink) -> None:
    await _unsupported(ctx, request)


subscribe_services = stream_logs
