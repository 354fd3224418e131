"""Serving a request once read: hello here, any other by its route, unary or stream.

Counts the requests in flight and the streams open, daemon-wide, for a clean drain.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from hive_client import ErrorCode, __version__
from hive_client.protocol import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Request,
    Response,
    StreamEnded,
    Welcome,
)

from ..dispatch import ROUTES, RequestContext, StreamCall, UnaryCall, may
from ..errors import RequestError
from ..json_lines import new_stream_id
from ..store import StoreError
from ._connection import Connection, StreamSink

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Dispatcher"]

log = logging.getLogger("hive.server")

FEATURES = ["multiplex", "streams", "json-lines", "events"]


class Dispatcher:
    """Runs each request a connection read, and answers it on that connection."""

    def __init__(self, app: App) -> None:
        self.app = app
        # Requests being answered and streams open, daemon-wide (for a clean drain).
        self._activity = 0
        self._idle = anyio.Event()
        # Taken to encode an answer outside the inline routes: each waiter gets its own
        # turn of the loop, and what other clients sent meanwhile is read in between.
        self._encode_turn = anyio.Lock(fast_acquire=False)

    async def drain(self) -> None:
        """Wait until every answer in flight is sent and every stream has ended.

        At shutdown the bus is closed first, so streams end once they delivered the
        last events; a client's ``shutdown`` request gets its answer this way too.
        """
        while self._activity:
            self._idle = anyio.Event()
            await self._idle.wait()

    def _begin(self) -> None:
        self._activity += 1

    def _end(self) -> None:
        self._activity -= 1
        if not self._activity:
            self._idle.set()

    async def dispatch(
        self,
        connection: Connection,
        msg_id: int,
        request: Request,
        task_group: anyio.abc.TaskGroup,
        slots: anyio.Semaphore | None,
    ) -> None:
        if isinstance(request, Hello):
            await self._hello(connection, msg_id, request)
            return
        route = ROUTES.get(type(request))
        if route is None:
            await connection.send_error(
                msg_id, ErrorCode.UNKNOWN_REQUEST, f"no handler for {type(request).__name__}"
            )
            return
        if not may(connection.scope, route.scope):
            refusal = RequestError.forbidden(connection.label, connection.scope,
                                             str(request.__struct_config__.tag), route.scope,
                                             group_member=connection.plugin is None)
            await connection.send_error(msg_id, refusal.code, refusal.message)
            return
        ctx = RequestContext(self.app, connection, msg_id)
        if route.stream is not None:
            cap = self.app.settings.daemon.max_streams_per_connection
            if connection.open_streams >= cap and connection.plugin is None:
                await connection.send_error(
                    msg_id, ErrorCode.LIMIT_EXCEEDED,
                    f"this connection has {cap} streams open, the limit "
                    "(daemon.max_streams_per_connection); stop one, or use a pattern that covers several",
                )
                return
            connection.open_streams += 1
            connection.busy += 1
            self._begin()
            sink = StreamSink(connection, msg_id, new_stream_id())
            task_group.start_soon(self._run_stream, ctx, request, route.stream, sink)
            if connection.json:
                # JSON lines has no ids: the next line is read once this one has its answer.
                await sink.answered.wait()
            return
        assert route.unary is not None  # a route has one handler, stream or unary
        if route.inline or slots is None:
            if slots is not None and not await self._answers_taken(connection):
                return
            self._begin()
            connection.busy += 1
            try:
                await connection.send(msg_id, await _answer(ctx, request, route.unary))
            finally:
                connection.busy -= 1
                self._end()
        else:
            await slots.acquire()  # (a pause: the request started last reaches its answer)
            try:
                served = await self._answers_taken(connection)
            finally:
                if not served:
                    slots.release()
            if not served:
                return
            self._begin()
            connection.busy += 1
            task_group.start_soon(self._run_unary, ctx, request, route.unary, slots)

    @staticmethod
    async def _answers_taken(connection: Connection) -> bool:
        """Binary frames: a unary request is served once the client took its last answer
        (JSON lines answers one line at a time already); False if it is gone meanwhile,
        and what it had pipelined is not worth computing. Stream requests are not held:
        their answer is small and their number capped (max_streams_per_connection)."""
        await connection.answers_taken()
        return not (connection.closed or connection.backlog.cut_reason)

    async def _hello(self, connection: Connection, msg_id: int, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            await connection.send_error(
                msg_id,
                ErrorCode.PROTOCOL_MISMATCH,
                f"this daemon speaks protocol {PROTOCOL_VERSION}, the client {hello.protocol}",
            )
            return
        await connection.send(
            msg_id,
            Welcome(protocol=PROTOCOL_VERSION, version=__version__, pid=os.getpid(), features=FEATURES),
        )

    async def _run_unary(
        self,
        ctx: RequestContext,
        request: Request,
        handler: UnaryCall,
        slots: anyio.Semaphore,
    ) -> None:
        try:
            answer = await _answer(ctx, request, handler)
            connection = ctx.connection
            # From here until the client took it, the answer holds the client's next request.
            connection.answer_pending()
            try:
                # One answer encoded per turn of the event loop (a 6 MiB one takes
                # milliseconds): clients asking for big answers at once do not hold up a
                # quick request of another client for the sum of them.
                async with self._encode_turn:
                    encoded = None if connection.closed else connection.encode(ctx.request_id, answer)
                if encoded is not None:
                    await connection.send_encoded(encoded, answer=False)
            finally:
                connection.answer_done()
        finally:
            slots.release()
            ctx.connection.busy -= 1
            self._end()

    async def _run_stream(self, ctx: RequestContext, request: Request, handler: StreamCall,
                          sink: StreamSink) -> None:
        try:
            await self._stream_body(ctx, request, handler, sink)
        finally:
            sink.answered.set()
            ctx.connection.open_streams -= 1
            ctx.connection.busy -= 1
            self._end()

    async def _stream_body(
        self, ctx: RequestContext, request: Request, handler: StreamCall, sink: StreamSink
    ) -> None:
        connection = ctx.connection
        stream_id = sink.stream_id
        with anyio.CancelScope() as scope:
            connection._streams[stream_id] = scope
            try:
                await handler(ctx, request, sink)
                reason = "complete"
            except RequestError as exc:
                await connection.send_error(ctx.request_id, exc.code, exc.message)
                return
            except StoreError as exc:  # the store's own error: STORAGE to the caller
                await connection.send_error(ctx.request_id, ErrorCode.STORAGE, exc.message)
                return
            except Exception:
                log.exception("stream %s (%s) failed", stream_id, type(request).__name__)
                reason = "internal error; see the daemon log"
            finally:
                connection._streams.pop(stream_id, None)
        if stream_id in connection._ended_by_answer:
            connection._ended_by_answer.discard(stream_id)
            return  # the stop request was answered with this stream's stream_ended
        if scope.cancelled_caught:
            reason = "stopped"
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await sink.send(StreamEnded(stream_id=stream_id, reason=reason))


async def _answer(ctx: RequestContext, request: Request, handler: UnaryCall) -> Response:
    """Run a unary handler and turn every outcome into a response (counted, with its
    duration, in the daemon's request stats)."""
    began = time.perf_counter()
    answer = await _outcome(ctx, request, handler)
    ctx.app.request_stats.record(str(request.__struct_config__.tag), time.perf_counter() - began,
                                 error=isinstance(answer, Error))
    return answer


async def _outcome(ctx: RequestContext, request: Request, handler: UnaryCall) -> Response:
    try:
        return await handler(ctx, request)
    except RequestError as exc:
        return Error(code=exc.code, message=exc.message, outcomes=exc.outcomes)
    except StoreError as exc:  # not a RequestError: the store knows nothing of requests
        return Error(code=ErrorCode.STORAGE, message=exc.message)
    except Exception as exc:
        log.exception("handler for %s failed", type(request).__name__)
        return Error(
            code=ErrorCode.INTERNAL,
            message=f"internal error ({type(exc).__name__}); the daemon log has the details",
        )
