"""The async client: one connection, many concurrent calls and streams (anyio).

Use it as ``async with DaemonClient() as client: ...``. The context owns a task
group with one reader task, which routes every incoming frame to the call or stream
whose request id it carries. Runs on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.abc
import msgspec

from ._errors import (
    ConnectionClosed,
    DaemonNotRunning,
    HiveError,
    ProtocolError,
    ProtocolVersionMismatch,
    RequestTimeout,
    SocketPermissionDenied,
    TransportError,
    daemon_error,
)
from ._framing import FrameReader, decode_envelope, decode_response, encode_frame
from ._messages import PROTOCOL_VERSION, Error, Hello, Request, Response, StopStream, Welcome
from ._methods_async import AsyncRequestMethods
from ._paths import resolve_socket_path
from ._streams import AsyncStream, StreamKind

__all__ = ["DaemonClient"]

R = TypeVar("R", bound=Response)
T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
CLIENT_MAX_FRAME = 64 * 1024 * 1024
STREAM_BUFFER = 4096


class _Mailbox:
    """Where the reader drops messages for one id; bounded, dropping the oldest."""

    __slots__ = ("_event", "_maxlen", "dropped", "error", "items")

    def __init__(self, maxlen: int) -> None:
        self.items: deque[Response] = deque()
        self._maxlen = maxlen
        self.dropped = 0
        self.error: HiveError | None = None
        self._event = anyio.Event()

    def put(self, message: Response) -> None:
        if len(self.items) >= self._maxlen:
            self.items.popleft()
            self.dropped += 1
        self.items.append(message)
        self._event.set()

    def fail(self, error: HiveError) -> None:
        self.error = error
        self._event.set()

    async def get(self) -> Response:
        while True:
            if self.items:
                return self.items.popleft()
            if self.error is not None:
                raise self.error
            self._event = anyio.Event()
            await self._event.wait()


class _Channel:
    """An open stream as :class:`AsyncStream` sees it."""

    def __init__(self, client: DaemonClient, msg_id: int, mailbox: _Mailbox) -> None:
        self._client = client
        self._id = msg_id
        self._mailbox = mailbox

    @property
    def dropped(self) -> int:
        return self._mailbox.dropped

    async def receive(self) -> Response:
        return await self._mailbox.get()

    async def close(self, stream_id: str | None) -> None:
        self._client._mailboxes.pop(self._id, None)
        if stream_id is not None and self._client._open:
            # Best effort: the daemon also ends streams when the connection closes.
            with anyio.move_on_after(2, shield=True), contextlib.suppress(HiveError):
                await self._client._call(StopStream(stream_id=stream_id), Response, 2)


class DaemonClient(AsyncRequestMethods):
    """Async client of the Hive daemon.

    ``socket_path`` defaults to what ``hive`` uses (``--socket``, ``$HIVE_SOCKET``,
    ``$HIVE_HOME``). ``timeout`` is the default per-call deadline in seconds (None: no
    deadline); every method also takes its own ``timeout``.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        client_name: str = "hive_client",
        max_frame: int = CLIENT_MAX_FRAME,
        connected: socket.socket | None = None,
    ) -> None:
        # ``connected``: a socket already connected to the daemon (the daemon hands its
        # core plugins one end of a socket pair); the path is then only for messages.
        self._connected = connected
        self.socket_path: Path = resolve_socket_path(socket_path) if connected is None else Path(
            str(socket_path or "<connected socket>"))
        self.timeout = timeout
        self.client_name = client_name
        self._max_frame = max_frame
        self._ids = itertools.count(1)
        self._mailboxes: dict[int, _Mailbox] = {}
        self._send_lock = anyio.Lock()
        self._stream: anyio.abc.SocketStream | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._reader_done: anyio.Event | None = None
        self._closing = False
        self._open = False
        self.welcome: Welcome | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> DaemonClient:
        path = str(self.socket_path)
        try:
            if self._connected is not None:
                self._stream = await anyio.abc.UNIXSocketStream.from_socket(self._connected)
            else:
                self._stream = await anyio.connect_unix(path)
        except FileNotFoundError as exc:
            raise DaemonNotRunning(path, "no socket") from exc
        except PermissionError as exc:
            raise SocketPermissionDenied(path) from exc
        except ConnectionRefusedError as exc:
            raise DaemonNotRunning(path, "connection refused") from exc
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise TransportError(f"socket path too long: {path}") from exc
            raise TransportError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._reader_done = anyio.Event()
        self._open = True
        self._task_group.start_soon(self._read_loop)
        try:
            welcome = await self._call(
                Hello(protocol=PROTOCOL_VERSION, client=self.client_name), Welcome, self.timeout
            )
        except BaseException:
            await self.aclose()
            raise
        if welcome.protocol != PROTOCOL_VERSION:
            await self.aclose()
            raise ProtocolVersionMismatch(
                f"daemon speaks protocol {welcome.protocol}, this client {PROTOCOL_VERSION}; "
                "upgrade the older of the two"
            )
        self.welcome = welcome
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with :class:`ConnectionClosed`."""
        if self._task_group is None:
            return
        self._open = False
        task_group, self._task_group = self._task_group, None
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stop_reader()
                await self._stream.aclose()
        task_group.cancel_scope.cancel()
        # Exited directly (not inside another scope): it is the scope __aenter__ opened.
        await task_group.__aexit__(None, None, None)
        self._fail_all(ConnectionClosed("the client was closed"))

    async def _stop_reader(self) -> None:
        """Let the reader end on EOF before the stream is closed.

        Closing anyio's asyncio UNIX stream under a reader that waits completes the
        reader's future from outside; if the daemon's last bytes arrived in the same
        loop turn, the readiness callback then sets that future again and asyncio
        reports an InvalidStateError. A shutdown ends the read the ordinary way.
        """
        assert self._stream is not None
        raw = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is None or self._reader_done is None:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        with anyio.move_on_after(1):
            await self._reader_done.wait()

    # --- transport ------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._stream is not None
        reader = FrameReader(self._max_frame)
        hung_up = ConnectionClosed("the daemon closed the connection")
        error: HiveError = hung_up
        try:
            while True:
                payload = reader.next_payload()
                if payload is None:
                    reader.feed(await self._stream.receive())
                    continue
                msg_id, raw = decode_envelope(payload)
                message = decode_response(raw)
                mailbox = self._mailboxes.get(msg_id)
                if mailbox is not None:
                    mailbox.put(message)
                elif isinstance(message, Error) and msg_id == 0:
                    # An error about a frame the daemon could not attribute: fatal.
                    error = daemon_error(message.code, message.message, message.outcomes)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            if self._closing and error is hung_up:
                error = ConnectionClosed("the client was closed")
        except OSError as exc:
            error = ConnectionClosed(f"connection to the daemon failed: {exc}")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = ProtocolError(f"undecodable frame from the daemon: {exc}")
        except HiveError as exc:
            error = exc
        finally:
            self._open = False
            self._fail_all(error)
            if self._reader_done is not None:
                self._reader_done.set()

    def _fail_all(self, error: HiveError) -> None:
        for mailbox in self._mailboxes.values():
            mailbox.fail(error)

    async def _send(self, msg_id: int, request: Request) -> None:
        if not self._open or self._stream is None:
            raise ConnectionClosed("not connected to the daemon")
        frame = encode_frame(msg_id, request)
        try:
            async with self._send_lock:
                await self._stream.send(frame)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            raise ConnectionClosed(f"connection to the daemon lost: {exc}") from exc

    async def _call(self, request: Request, expect: type[R], timeout: float | None) -> R:
        msg_id = next(self._ids)
        mailbox = _Mailbox(1)
        self._mailboxes[msg_id] = mailbox
        deadline = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(deadline):
                await self._send(msg_id, request)
                message = await mailbox.get()
        except TimeoutError:
            raise RequestTimeout(
                f"{type(request).__name__} got no answer within {deadline} s"
            ) from None
        finally:
            self._mailboxes.pop(msg_id, None)
        if isinstance(message, expect):
            return message
        if isinstance(message, Error):
            raise daemon_error(message.code, message.message, message.outcomes)
        raise ProtocolError(f"expected {expect.__name__}, got {type(message).__name__}")

    def _open_stream(self, request: Request, kind: StreamKind[T]) -> AsyncStream[T]:
        async def opener() -> _Channel:
            msg_id = next(self._ids)
            mailbox = _Mailbox(STREAM_BUFFER)
            self._mailboxes[msg_id] = mailbox
            try:
                with anyio.fail_after(self.timeout):
                    await self._send(msg_id, request)
                    # Wait for stream_started (or an error) under the deadline, then
                    # put it back for the stream to interpret.
                    mailbox.items.appendleft(await mailbox.get())
            except TimeoutError:
                self._mailboxes.pop(msg_id, None)
                raise RequestTimeout(
                    f"{type(request).__name__} got no answer within {self.timeout} s"
                ) from None
            except BaseException:
                self._mailboxes.pop(msg_id, None)
                raise
            return _Channel(self, msg_id, mailbox)

        return AsyncStream(opener, kind)
