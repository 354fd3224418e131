"""A connected socket on the event loop, read and written without needless waits."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import anyio

__all__ = ["RECEIVE_SIZE", "RawStream", "linger"]

RECEIVE_SIZE = 256 * 1024
_LINGER_SECONDS = 2.0


class RawStream:
    """A connected socket driven with ``wait_readable``/``wait_writable``.

    Thinner than anyio's SocketStream: a read or write that the kernel can satisfy at
    once never yields to the event loop, which is most of a request's round trip. On
    asyncio the socket stays registered for reading between requests (anyio's
    ``wait_readable`` registers and unregisters it on every wait: two syscalls and a
    few objects per request).
    """

    __slots__ = ("_drained", "_loop", "_reading", "_sock", "_waiter", "unsent")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        # After a short read the kernel buffer is empty: wait before the next recv
        # rather than pay for a recv that can only say EAGAIN.
        self._drained = False
        self._loop = _running_asyncio_loop()
        self._reading = False  # registered with the loop's selector
        self._waiter: asyncio.Future[None] | None = None
        self.unsent = 0  # bytes of the frame being sent that have not gone yet

    @property
    def raw(self) -> socket.socket:
        return self._sock

    async def _wait_readable(self) -> None:
        loop = self._loop
        if loop is None:
            await anyio.wait_readable(self._sock)
            return
        if not self._reading:
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._reading = True
        self._waiter = waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # Nobody reads now (a request is being served): unregister until someone
            # does, or the level-triggered selector would call this on every turn.
            self._stop_reading()
        elif not waiter.done():
            waiter.set_result(None)

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        while True:
            if self._drained:
                await self._wait_readable()
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                self._drained = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            self._drained = len(data) < max_bytes
            return data

    def send_nowait(self, data: bytes | memoryview) -> memoryview:
        """Send what the kernel takes now; what is left (empty when all went)."""
        view = memoryview(data)
        try:
            sent = self._sock.send(view)
        except BlockingIOError:
            return view
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        return view[sent:]

    async def send(self, data: bytes | memoryview) -> None:
        """Send all of ``data``; if interrupted, ``unsent`` says how much did not go."""
        view = memoryview(data)
        self.unsent = len(view)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]
            self.unsent = len(view)

    def abort(self) -> None:
        """End the connection both ways now (its task closes the socket)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._stop_reading()  # (only the reading task closes: nobody waits here now)
            anyio.notify_closing(self._sock)
            self._sock.close()


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None under another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def linger(stream: RawStream) -> None:
    """Before closing on a client: stop writing, discard what it still sends (briefly).

    Closing a Unix socket with unread input resets the connection, and the client would
    lose the error we just sent it.
    """
    with anyio.move_on_after(_LINGER_SECONDS):
        try:
            await stream.send_eof()
            while await stream.receive(RECEIVE_SIZE):
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
