"""One client's connection: its send path, flow control, backlog and streams."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import anyio

from hive_client import ErrorCode
from hive_client.protocol import Error, Response, StreamStarted, encode_frame, encode_json_line

from ..client_limits import Backlog
from ..dispatch import Scope
from ..json_lines import hive_shape, stream_key
from ._peer import Peer
from ._rate_limit import RateLimit
from ._raw_stream import RawStream

if TYPE_CHECKING:
    from ._socket_server import SocketServer

__all__ = ["Connection", "StreamSink"]

log = logging.getLogger("hive.server")

# A client cut off for falling behind gets this long to take the frame being sent and
# the error after it; then the connection is closed whatever it took.
_CUT_GRACE_SECONDS = 2.0


class Connection:
    """One client. Sends are serialised by a lock; everything else runs concurrently."""

    def __init__(self, server: SocketServer, stream: RawStream, peer: Peer,
                 scope: Scope = "admin", label: str = "") -> None:
        self.server = server
        self.id = next(server._connection_ids)
        self.peer = peer
        # What this client may ask (see dispatch.SCOPES); socket clients of the daemon's
        # user are admins, a core plugin has the scope its settings give it.
        self.scope: Scope = scope
        self.label = label or f"connection {self.id}"
        self.limit: RateLimit | None = None
        self.plugin: str | None = None  # the core plugin this connection serves
        self.json = False
        self.closed = False
        self._stream = stream
        # fast_acquire: no trip through the event loop when nobody else is sending.
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._streams: dict[str, anyio.CancelScope] = {}
        # Streams whose stream_ended was the answer to the request that stopped them.
        self._ended_by_answer: set[str] = set()
        self.open_streams = 0  # streams accepted, started or not (the cap counts these)
        self._waiting_sends: set[anyio.CancelScope] = set()  # frames waiting for the lock
        self._incoming = 0  # bytes received, not yet a whole frame (charged to the backlog)
        self.cut_done = anyio.Event()  # set once a cut-off client has been told and closed
        self.frame_began = 0.0  # when the first byte of the unfinished frame came
        self.busy = 0  # requests in flight and streams open: not idle
        # Answers (not stream items) that wait for this client to read. While one waits,
        # no further request of this client is served: its requests stay in the socket,
        # so a client that asks much and reads nothing holds one answer, not dozens, and
        # takes no more of the daemon's loop than its share.
        self._answers_unsent = 0
        self._answers_taken = anyio.Event()
        # Bytes queued for this client (stream queues, unsent frames), under the budget.
        self.backlog: Backlog = server.budget.backlog(self._cut_off)

    async def answers_taken(self) -> None:
        """Return once no answer waits for this client to read (it took them, or is gone)."""
        while self._answers_unsent and not self.closed:
            self._answers_taken = anyio.Event()
            await self._answers_taken.wait()

    def answer_pending(self) -> None:
        """An answer exists that this client has not taken yet (see ``answers_taken``)."""
        self._answers_unsent += 1

    def answer_done(self) -> None:
        self._answers_unsent -= 1
        if not self._answers_unsent:
            self._answers_taken.set()

    def encode(self, msg_id: int, message: Response) -> bytes:
        """``message`` as this connection's transport carries it, secret values hidden
        from clients below ``admin`` (an admin can read config.toml and run commands as
        the daemon's user: hiding from it would hide nothing, and break its paths)."""
        encoded = self._encode(msg_id, message)
        secrets = self.server.secrets
        if self.scope != "admin" and secrets.found_in(encoded, json=self.json):
            encoded = self._encode(msg_id, secrets.scrub(message))
        return encoded

    def _encode(self, msg_id: int, message: Response) -> bytes:
        return encode_json_line(hive_shape(message)) if self.json else encode_frame(msg_id, message)

    async def send(self, msg_id: int, message: Response, *, answer: bool = True) -> bool:
        """Send one message; False (and the connection marked closed) if the peer is gone
        or has been cut off for falling behind. ``answer``: the answer to a request (a
        stream's items are not), which holds the client's next request while it waits."""
        if self.closed or self.backlog.cut_reason:
            return False
        return await self.send_encoded(self.encode(msg_id, message), answer=answer)

    async def send_encoded(self, encoded: bytes, *, answer: bool = True) -> bool:
        """:meth:`send` of a message already encoded (:meth:`encode`)."""
        if self.closed or self.backlog.cut_reason:
            return False
        data: bytes | memoryview = encoded
        torn = False  # some of this frame went out, not all of it
        queued = 0  # bytes of this frame charged to the backlog while they wait
        try:
            if not self._send_lock.locked():
                # Nobody is halfway through a frame: what the kernel takes at once needs
                # no lock; the rest (if any) is sent holding it, taken without a pause.
                size = len(data)
                data = self._stream.send_nowait(data)
                if not data:
                    return True
                torn = len(data) < size
            queued = len(data)
            self.backlog.charge(queued)
            if answer:
                self.answer_pending()
            if self.backlog.cut_reason and not torn:
                return False  # over its budget: this frame is dropped, the cut-off follows
            # A cut-off ends this wait at once (and frees the frame) unless it is torn.
            with anyio.CancelScope() as waiting:
                if not torn:
                    self._waiting_sends.add(waiting)
                try:
                    await self._send_lock.acquire()
                finally:
                    self._waiting_sends.discard(waiting)
            if waiting.cancelled_caught:
                return False
            try:
                if self.backlog.cut_reason and not torn:
                    return False
                try:
                    await self._stream.send(data)
                except BaseException:
                    torn = torn or self._stream.unsent < len(data)
                    raise
            finally:
                self._send_lock.release()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.closed = True
            return False
        except BaseException:
            if torn:
                # Cancelled halfway through the frame: whatever came next would be read
                # as the rest of it. The connection cannot go on; the client sees it end.
                self.closed = True
                self._stream.abort()
            raise
        finally:
            if queued:
                self.backlog.release(queued)
                if answer:
                    self.answer_done()
        return True

    def hold_incoming(self, size: int) -> None:
        """``size`` bytes of an unfinished frame are held for this client."""
        if size > self._incoming:
            self.backlog.charge(size - self._incoming)
        elif size < self._incoming:
            self.backlog.release(self._incoming - size)
        self._incoming = size

    def _cut_off(self, reason: str) -> None:
        """The client fell behind (see client_limits): end its streams now, tell it why
        once the frame being written is out, and close it."""
        log.warning("cut off %s (uid %d): %s", self.label, self.peer.uid, reason)
        self.cancel_all_streams()
        for waiting in self._waiting_sends:
            waiting.cancel()
        self.server.start_soon(self._send_cut_off, reason)

    async def _send_cut_off(self, reason: str) -> None:
        with anyio.move_on_after(_CUT_GRACE_SECONDS):
            async with self._send_lock:  # after the frame being written, if it goes
                error = Error(code=ErrorCode.SLOW_CONSUMER, message=reason)
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await self._stream.send(encode_json_line(error) if self.json else encode_frame(0, error))
        self.closed = True
        self._stream.abort()
        self.cut_done.set()

    async def send_error(self, msg_id: int, code: ErrorCode, message: str) -> bool:
        return await self.send(msg_id, Error(code=code, message=message))

    def cancel_stream(self, stream_id: str, *, answered: bool = False) -> bool:
        """Stop a stream of this connection; ``answered``: the caller answers with its
        ``stream_ended`` (Hive's way), so the stream sends none of its own."""
        key = stream_key(stream_id)
        scope = self._streams.get(key)
        if scope is None:
            return False
        if answered:
            self._ended_by_answer.add(key)
        scope.cancel()
        return True

    def cancel_all_streams(self) -> None:
        for scope in self._streams.values():
            scope.cancel()


class StreamSink:
    """The stream side a handler writes to.

    ``stream_started`` goes out on :meth:`start` (or with the first item), so a handler
    that refuses the request before starting answers with a plain error instead.
    """

    __slots__ = ("_connection", "_msg_id", "answered", "started", "stream_id")

    def __init__(self, connection: Connection, msg_id: int, stream_id: str) -> None:
        self._connection = connection
        self._msg_id = msg_id
        self.stream_id = stream_id
        self.started = False
        # Set once the request has its answer (stream_started, or the stream is over).
        self.answered = anyio.Event()

    async def start(self) -> bool:
        if self.started:
            return not self._connection.closed
        self.started = True
        try:
            return await self._connection.send(self._msg_id, StreamStarted(stream_id=self.stream_id))
        finally:
            self.answered.set()

    async def send(self, item: Response) -> bool:
        if not self.started and not await self.start():
            return False
        return await self._connection.send(self._msg_id, item, answer=False)
