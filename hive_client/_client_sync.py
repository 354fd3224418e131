"""The blocking client: stdlib ``socket`` only, one call at a time.

It imports neither anyio nor an event loop, so a script or the ``hive`` CLI starts
fast. The hello is pipelined with the first request, so a one-shot command costs a
single round trip.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

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
from ._framing import (
    FrameReader,
    decode_envelope,
    decode_response,
    decode_response_as,
    encode_frame,
)
from ._messages import PROTOCOL_VERSION, Error, Hello, Request, Response, StopStream, Welcome
from ._methods_sync import SyncRequestMethods
from ._paths import resolve_socket_path
from ._streams import StreamKind, SyncStream

__all__ = ["BlockingClient"]

R = TypeVar("R", bound=Response)
T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
CLIENT_MAX_FRAME = 64 * 1024 * 1024
_RECV_SIZE = 256 * 1024


class _SyncChannel:
    def __init__(self, client: BlockingClient, msg_id: int) -> None:
        self._client = client
        self._id = msg_id
        self.dropped = 0

    def receive(self) -> Response:
        return self._client._receive(self._id, None)

    def close(self, stream_id: str | None) -> None:
        if stream_id is not None and self._client._sock is not None:
            with contextlib.suppress(HiveError):
                self._client._call(StopStream(stream_id=stream_id), Response, 2.0)


class BlockingClient(SyncRequestMethods):
    """Blocking client of the Hive daemon, for scripts: ``with BlockingClient() as c:``.

    Calls are serial: while a stream is being iterated, open a second client for
    other calls.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        client_name: str = "hive_client.sync",
        max_frame: int = CLIENT_MAX_FRAME,
    ) -> None:
        self.socket_path: Path = resolve_socket_path(socket_path)
        self.timeout = timeout
        self.client_name = client_name
        self._reader = FrameReader(max_frame)
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._hello_id: int | None = None
        self.welcome: Welcome | None = None

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        path = str(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except FileNotFoundError as exc:
            sock.close()
            raise DaemonNotRunning(path, "no socket") from exc
        except PermissionError as exc:
            sock.close()
            raise SocketPermissionDenied(path) from exc
        except ConnectionRefusedError as exc:
            sock.close()
            raise DaemonNotRunning(path, "connection refused") from exc
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENAMETOOLONG:
                raise TransportError(f"socket path too long: {path}") from exc
            raise TransportError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        self._sock = sock
        # Pipelined: the welcome is read together with the first answer.
        self._hello_id = next(self._ids)
        self._send(self._hello_id, Hello(protocol=PROTOCOL_VERSION, client=self.client_name))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # --- transport ------------------------------------------------------------------

    def _send(self, msg_id: int, request: Request) -> None:
        if self._sock is None:
            raise ConnectionClosed("not connected to the daemon")
        try:
            self._sock.sendall(encode_frame(msg_id, request))
        except OSError as exc:
            self.close()
            raise ConnectionClosed(f"connection to the daemon lost: {exc}") from exc

    def _next_frame(self, deadline: float | None) -> tuple[int, msgspec.Raw]:
        sock = self._sock
        if sock is None:
            raise ConnectionClosed("not connected to the daemon")
        while True:
            payload = self._reader.next_payload()
            if payload is not None:
                try:
                    return decode_envelope(payload)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    self.close()
                    raise ProtocolError(f"undecodable frame from the daemon: {exc}") from exc
            if deadline is None:
                sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise
            except OSError as exc:
                self.close()
                raise ConnectionClosed(f"connection to the daemon lost: {exc}") from exc
            if not data:
                self.close()
                raise ConnectionClosed("the daemon closed the connection")
            self._reader.feed(data)

    def _decode(self, raw: msgspec.Raw, expect: tuple[type[Response], ...] | None) -> Response:
        try:
            if expect is None:
                return decode_response(raw)
            return decode_response_as(raw, expect)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.close()
            raise ProtocolError(f"unexpected answer from the daemon: {exc}") from exc

    def _receive(
        self, msg_id: int, deadline: float | None, expect: tuple[type[Response], ...] | None = None
    ) -> Response:
        """The next message for ``msg_id``; messages for other ids are stale and dropped."""
        while True:
            got_id, raw = self._next_frame(deadline)
            if got_id == self._hello_id:
                self._check_welcome(self._decode(raw, (Welcome, Error)))
                continue
            if got_id == msg_id:
                return self._decode(raw, expect)
            if got_id == 0:
                message = self._decode(raw, None)
                if isinstance(message, Error):
                    raise daemon_error(message.code, message.message, message.outcomes)

    def _check_welcome(self, message: Response) -> None:
        self._hello_id = None
        if isinstance(message, Error):
            raise daemon_error(message.code, message.message, message.outcomes)
        if not isinstance(message, Welcome):
            raise ProtocolError(f"expected welcome, got {type(message).__name__}")
        if message.protocol != PROTOCOL_VERSION:
            self.close()
            raise ProtocolVersionMismatch(
                f"daemon speaks protocol {message.protocol}, this client {PROTOCOL_VERSION}; "
                "upgrade the older of the two"
            )
        self.welcome = message

    def _call(self, request: Request, expect: type[R], timeout: float | None) -> R:
        if self._sock is None:
            self.connect()
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        msg_id = next(self._ids)
        self._send(msg_id, request)
        narrow = None if expect is Response else (expect, Error)
        try:
            message = self._receive(msg_id, deadline, narrow)
        except TimeoutError:
            # The answer may still come; this connection can no longer be trusted.
            self.close()
            raise RequestTimeout(f"{type(request).__name__} got no answer within {limit} s") from None
        if isinstance(message, expect):
            return message
        if isinstance(message, Error):
            raise daemon_error(message.code, message.message, message.outcomes)
        raise ProtocolError(f"expected {expect.__name__}, got {type(message).__name__}")

    def _open_stream(self, request: Request, kind: StreamKind[T]) -> SyncStream[T]:
        def opener() -> _SyncChannel:
            if self._sock is None:
                self.connect()
            msg_id = next(self._ids)
            self._send(msg_id, request)
            return _SyncChannel(self, msg_id)

        return SyncStream(opener, kind)
