"""The socket server: accept, check the peer, pick the transport, serve requests.

A connection whose first byte is ``{`` speaks JSON lines; any other speaks length-
prefixed MessagePack frames. Each connection is its own task; its requests and
streams are tasks of the connection's task group, so a client that hangs up cancels
its streams and nothing it started outlives it. Bad input is answered with an error
and never reaches the rest of the daemon.
"""

from __future__ import annotations

import grp
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec

from hive_client import ErrorCode, FrameTooLarge, __version__
from hive_client.protocol import (
    PROTOCOL_VERSION,
    Error,
    FrameReader,
    Hello,
    Request,
    Response,
    StreamEnded,
    Welcome,
    decode_envelope,
    decode_request,
    json_request_decoder,
)

from ..allocator import Trimmer
from ..client_limits import AcceptBackoff, ClientBudget, ReportsPerUid, descriptors_left
from ..dispatch import ROUTES, RequestContext, Scope, StreamCall, UnaryCall, may
from ..errors import RequestError
from ..json_lines import new_stream_id
from ..store import StoreError
from ._connection import Connection, StreamSink
from ._peer import Peer, bind_unix_socket, groups_of, peer_of
from ._rate_limit import RateLimit
from ._raw_stream import RECEIVE_SIZE, RawStream, linger

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Connection", "Peer", "RateLimit", "RawStream", "SocketServer", "bind_unix_socket"]

log = logging.getLogger("hive.server")

FEATURES = ["multiplex", "streams", "json-lines", "events"]
_REFUSAL_READ_TIMEOUT = 1.0


class SocketServer:
    def __init__(self, app: App, sock: socket.socket, *, max_frame: int, max_inflight: int) -> None:
        self.app = app
        self.secrets = app.sources.secrets  # hidden in every frame sent (redaction.py)
        self._sock = sock
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self._connection_ids = itertools.count(1)
        self.connections: set[Connection] = set()
        self._allowed_gid: int | None = None
        group = app.settings.daemon.allowed_group
        if group:
            self._allowed_gid = grp.getgrnam(group).gr_gid
        self._uid = os.geteuid()
        self._connections: anyio.abc.TaskGroup | None = None
        # Requests being answered and streams open, daemon-wide (for a clean drain).
        self._activity = 0
        self._idle = anyio.Event()
        daemon = app.settings.daemon
        # What clients held goes back to the system once they released it (allocator.py).
        self.trimmer = Trimmer()
        self.budget = ClientBudget(daemon.client_backlog_bytes, daemon.clients_backlog_total_bytes,
                                   drained=self._drained)
        self._per_uid: dict[int, int] = {}  # connections of each (limited) uid
        self._refusals = ReportsPerUid()
        self._timeouts = ReportsPerUid()
        # Taken to encode an answer outside the inline routes: each waiter gets its own
        # turn of the loop, and what other clients sent meanwhile is read in between.
        self._encode_turn = anyio.Lock(fast_acquire=False)
        self._last_turned_away_log = -60.0
        self._turned_away = 0

    def _drained(self) -> None:
        if self._connections is not None:
            self.trimmer.request(self._connections)

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
        """Run a task for a connection in the server's task group (it outlives the request)."""
        assert self._connections is not None, "start_soon() before serve() started"
        self._connections.start_soon(func, *args)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = self._sock
        listener.setblocking(False)
        async with anyio.create_task_group() as connections:
            self._connections = connections
            task_status.started()
            backoff = AcceptBackoff()
            while True:
                await anyio.wait_readable(listener)
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:
                    # EMFILE and the like: back off (logged once per episode), keep serving.
                    await anyio.sleep(backoff.failed(exc))  # wait-ok: back off after EMFILE and the like
                    continue
                backoff.succeeded()
                if descriptors_left() < self.app.settings.daemon.reserved_fds:
                    # What is left is supervision's: a service start must not fail for a client.
                    self._turn_away_now(client)
                    continue
                connections.start_soon(self._serve_connection, client)

    def _turn_away_now(self, client: socket.socket) -> None:
        """Close a client at once (descriptors are short): no read, no linger."""
        now = time.monotonic()
        if now - self._last_turned_away_log >= 60.0:
            log.warning("turned away a client: fewer than daemon.reserved_fds (%d) descriptors left "
                        "(%d turned away since the last report)", self.app.settings.daemon.reserved_fds,
                        self._turned_away + 1)
            self._last_turned_away_log, self._turned_away = now, 0
        else:
            self._turned_away += 1
        client.close()

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

    # --- per connection -----------------------------------------------------------------

    def _allowed(self, peer: Peer) -> bool:
        if peer.uid in (self._uid, 0):
            return True
        if self._allowed_gid is None:
            return False
        return peer.gid == self._allowed_gid or self._allowed_gid in groups_of(peer.uid)

    def _runs_plugin_code(self, pid: int) -> bool:
        plugins = self.app.plugins
        return pid == os.getpid() or (plugins is not None and pid in plugins.pids())

    def attach(self, sock: socket.socket, *, plugin: str, scope: Scope, max_rate: float = 0.0) -> None:
        """Serve one end of a socket pair as a client limited to ``scope`` and, if
        ``max_rate`` > 0, to that many requests a second (a core plugin's connection:
        the same protocol as any client, no back door)."""
        assert self._connections is not None, "attach() before serve() started"
        limit = RateLimit(max_rate, burst=max_rate) if max_rate > 0 else None
        self._connections.start_soon(self._serve_connection, sock, scope, plugin, limit)

    async def _serve_connection(self, sock: socket.socket, scope: Scope = "admin", plugin: str | None = None,
                                limit: RateLimit | None = None) -> None:
        stream = RawStream(sock)
        try:
            await self._serve_stream(stream, scope, plugin, limit)
        finally:
            stream.close()

    async def _serve_stream(self, stream: RawStream, scope: Scope, plugin: str | None,
                            limit: RateLimit | None) -> None:
        try:
            peer = peer_of(stream.raw)
        except OSError:
            return
        label = f"plugin {plugin!r}" if plugin else ""
        if plugin is None and peer.uid not in (self._uid, 0):
            # A member of the allowed group (anyone else is refused just below).
            scope = self.app.settings.daemon.group_scope
            label = f"uid {peer.uid}"
        connection = Connection(self, stream, peer, scope, label)
        connection.limit = limit
        connection.plugin = plugin
        if not self._allowed(peer):
            connection.backlog.close()
            await self._refuse(connection, stream)
            return
        if plugin is None and self._runs_plugin_code(peer.pid):
            # Only core plugins run code in the daemon's process and their own: a plugin
            # is not to shed its scope by connecting to the socket as an admin
            # (docs/plugins.md, Trust).
            connection.backlog.close()
            await self._refuse(connection, stream, ErrorCode.FORBIDDEN,
                               "a connection from a core plugin's process is refused: a core plugin "
                               "uses the client it is given, limited to its scope")
            return
        limited = plugin is None and peer.uid not in (self._uid, 0)
        if limited and self._per_uid.get(peer.uid, 0) >= self.app.settings.daemon.max_connections_per_uid:
            connection.backlog.close()
            most = self.app.settings.daemon.max_connections_per_uid
            await self._refuse(connection, stream, ErrorCode.LIMIT_EXCEEDED,
                               f"uid {peer.uid} has {most} connections open, the limit "
                               "(daemon.max_connections_per_uid); close some and try again")
            return
        if limited:
            self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        self.connections.add(connection)
        try:
            try:
                first = await self._receive(connection, stream, partial=False)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            if first is None:
                await linger(stream)
                return
            connection.frame_began = time.monotonic()
            if first[:1] == b"{":
                connection.json = True
                await self._serve_json(connection, stream, first)
            else:
                await self._serve_binary(connection, stream, first)
        finally:
            connection.closed = True
            connection.backlog.close()
            self.connections.discard(connection)
            if limited:
                left = self._per_uid[peer.uid] - 1
                if left:
                    self._per_uid[peer.uid] = left
                else:
                    del self._per_uid[peer.uid]

    async def _receive(self, connection: Connection, stream: RawStream, *, partial: bool) -> bytes | None:
        """The next bytes from the client, or None once it timed out (it has been told).

        ``partial``: a frame (or JSON line) has begun; it gets ``frame_timeout`` from its
        first byte (``connection.frame_began``). Otherwise a connection with nothing in
        flight and no stream may stay silent for ``idle_timeout``."""
        settings = self.app.settings.daemon
        while True:
            if partial and settings.frame_timeout > 0:
                deadline = connection.frame_began + settings.frame_timeout
                why = (f"an unfinished frame waited {settings.frame_timeout:g} s for its end "
                       "(daemon.frame_timeout); send each frame whole")
            elif not partial and settings.idle_timeout > 0 and connection.plugin is None:
                deadline = time.monotonic() + settings.idle_timeout
                why = (f"idle for {settings.idle_timeout:g} s with no request and no stream "
                       "(daemon.idle_timeout); connect again when needed")
            else:
                return await stream.receive(RECEIVE_SIZE)
            with anyio.move_on_at(deadline):
                return await stream.receive(RECEIVE_SIZE)
            if partial or not connection.busy:
                unreported = self._timeouts.report(connection.peer.uid)
                if unreported is not None:
                    more = f" ({unreported} more closed since the last report)" if unreported else ""
                    log.info("closed %s (uid %d): %s%s", connection.label, connection.peer.uid, why, more)
                await connection.send_error(0, ErrorCode.TIMEOUT, why)
                connection.closed = True
                return None

    async def _refuse(self, connection: Connection, stream: RawStream,
                      code: ErrorCode = ErrorCode.PERMISSION_DENIED, message: str = "") -> None:
        message = message or f"uid {connection.peer.uid} may not use this daemon (it belongs to uid {self._uid})"
        unreported = self._refusals.report(connection.peer.uid)
        if unreported is not None:
            more = f" ({unreported} more refused since the last report)" if unreported else ""
            log.warning("refused a connection from uid %d (pid %d): %s%s",
                        connection.peer.uid, connection.peer.pid, message, more)
        # Answer in the client's own transport if it says something quickly.
        with anyio.move_on_after(_REFUSAL_READ_TIMEOUT):
            try:
                connection.json = (await stream.receive(1)) == b"{"
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
        await connection.send_error(0, code, message)
        await linger(stream)

    async def _serve_binary(
        self, connection: Connection, stream: RawStream, first: bytes
    ) -> None:
        reader = FrameReader(self.max_frame)
        reader.feed(first)
        slots = anyio.Semaphore(self.max_inflight)
        async with anyio.create_task_group() as requests:
            try:
                while not connection.closed:
                    try:
                        payload = reader.next_payload()
                    except FrameTooLarge as exc:
                        # The stream cannot be resynchronised past an unread frame: close.
                        await connection.send_error(0, ErrorCode.FRAME_TOO_LARGE, str(exc))
                        await linger(stream)
                        break
                    if payload is None:
                        try:
                            data = await self._receive(connection, stream, partial=reader.buffered > 0)
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
                        if data is None:
                            await linger(stream)
                            break
                        if not reader.buffered:
                            connection.frame_began = time.monotonic()
                        reader.feed(data)
                        connection.hold_incoming(reader.buffered)
                        if connection.backlog.cut_reason:
                            await connection.cut_done.wait()
                            break
                        continue
                    connection.hold_incoming(reader.buffered)
                    # What is left belongs to the next frame: its time starts now.
                    connection.frame_began = time.monotonic()
                    try:
                        msg_id, raw = decode_envelope(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(
                            0, ErrorCode.INVALID_REQUEST, f"undecodable frame: {exc}"
                        )
                        continue
                    try:
                        request = decode_request(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(msg_id, ErrorCode.INVALID_REQUEST, _describe(exc))
                        continue
                    if connection.limit is not None:
                        await connection.limit.take()
                    await self._dispatch(connection, msg_id, request, requests, slots)
            finally:
                # The client is done sending: let answers in flight finish, end streams.
                connection.hold_incoming(0)
                connection.cancel_all_streams()

    async def _serve_json(
        self, connection: Connection, stream: RawStream, first: bytes
    ) -> None:
        buffer = bytearray(first)
        async with anyio.create_task_group() as streams:
            try:
                while not connection.closed:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        if len(buffer) > self.max_frame:
                            await connection.send_error(
                                0,
                                ErrorCode.FRAME_TOO_LARGE,
                                f"line longer than the limit of {self.max_frame} bytes",
                            )
                            await linger(stream)
                            break
                        try:
                            data = await self._receive(connection, stream, partial=bool(buffer))
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
                        if data is None:
                            await linger(stream)
                            break
                        if not buffer:
                            connection.frame_began = time.monotonic()
                        buffer += data
                        connection.hold_incoming(len(buffer))
                        if connection.backlog.cut_reason:
                            await connection.cut_done.wait()
                            break
                        continue
                    line = bytes(buffer[:newline]).strip()
                    del buffer[: newline + 1]
                    connection.hold_incoming(len(buffer))
                    connection.frame_began = time.monotonic()
                    if not line:
                        continue
                    try:
                        request = json_request_decoder().decode(line)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(0, ErrorCode.INVALID_REQUEST, _describe(exc))
                        continue
                    # One answer per line, in order: unary requests run one at a time.
                    await self._dispatch(connection, 0, request, streams, None)
            finally:
                connection.hold_incoming(0)
                connection.cancel_all_streams()

    async def _dispatch(
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


def _describe(exc: msgspec.MsgspecError) -> str:
    text = str(exc)
    if text.endswith("- at `$.type`") or ("Invalid value" in text and "`$.type`" in text):
        return f"unknown request type: {text}"
    if isinstance(exc, msgspec.ValidationError):
        return f"invalid request: {text}"
    return f"malformed message: {text}"
