"""Streams the daemon pushes (logs, events, service updates), as iterators.

A stream is opened by a request; the daemon answers ``stream_started``, then items
carrying the request's id, and ends with ``stream_ended``. If the reader falls behind,
the oldest items are dropped and counted in :attr:`AsyncStream.dropped`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from ._errors import ProtocolError, daemon_error
from ._messages import (
    Error,
    EventItem,
    LogLineItem,
    Response,
    ServiceUpdate,
    StreamEnded,
    StreamLagged,
    StreamStarted,
)
from ._models import DaemonEvent, LogLine, ServiceInfo

__all__ = [
    "EVENTS",
    "LOG_LINES",
    "SERVICE_UPDATES",
    "AsyncChannel",
    "AsyncStream",
    "StreamKind",
    "SyncChannel",
    "SyncStream",
]

T = TypeVar("T")


class StreamKind(Generic[T]):
    """Which item message a stream carries and how to unwrap it."""

    __slots__ = ("extract", "item_type")

    def __init__(self, item_type: type[Response], extract: Callable[[Response], T]) -> None:
        self.item_type = item_type
        self.extract = extract


def _line(message: Response) -> LogLine:
    assert isinstance(message, LogLineItem)
    return message.line


def _event(message: Response) -> DaemonEvent:
    assert isinstance(message, EventItem)
    return message.event


def _service(message: Response) -> ServiceInfo:
    assert isinstance(message, ServiceUpdate)
    return message.service


LOG_LINES: StreamKind[LogLine] = StreamKind(LogLineItem, _line)
EVENTS: StreamKind[DaemonEvent] = StreamKind(EventItem, _event)
SERVICE_UPDATES: StreamKind[ServiceInfo] = StreamKind(ServiceUpdate, _service)


class AsyncChannel(Protocol):
    """The transport's side of one open stream."""

    @property
    def dropped(self) -> int: ...

    async def receive(self) -> Response: ...

    async def close(self, stream_id: str | None) -> None: ...


class SyncChannel(Protocol):
    @property
    def dropped(self) -> int: ...

    def receive(self) -> Response: ...

    def close(self, stream_id: str | None) -> None: ...


class _StreamState:
    """What both stream flavours track: the id, the end, the lag."""

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.ended = False
        self.end_reason = ""
        self._lagged = 0

    def absorb(self, message: Response, item_type: type[Response]) -> Response | None:
        """Interpret one message; an item is handed back, anything else is taken in."""
        if isinstance(message, item_type):
            return message
        if isinstance(message, StreamStarted):
            self.stream_id = message.stream_id
        elif isinstance(message, StreamLagged):
            self._lagged += message.dropped
        elif isinstance(message, StreamEnded):
            self.ended = True
            self.end_reason = message.reason
        elif isinstance(message, Error):
            self.ended = True
            raise daemon_error(message.code, message.message)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} in a stream")
        return None


class AsyncStream(_StreamState, Generic[T]):
    """An async iterator over a daemon stream; use it as ``async with``."""

    def __init__(self, opener: Callable[[], Awaitable[AsyncChannel]], kind: StreamKind[T]) -> None:
        super().__init__()
        self._opener = opener
        self._kind = kind
        self._channel: AsyncChannel | None = None

    @property
    def dropped(self) -> int:
        """Items lost because this reader fell behind (daemon side and client side)."""
        return self._lagged + (self._channel.dropped if self._channel else 0)

    async def open(self) -> None:
        """Send the request and wait for ``stream_started`` (or the daemon's error)."""
        if self._channel is not None:
            return
        self._channel = await self._opener()
        while self.stream_id is None and not self.ended:
            if self.absorb(await self._channel.receive(), self._kind.item_type) is not None:
                raise ProtocolError("stream item before stream_started")

    async def __aenter__(self) -> AsyncStream[T]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        await self.open()
        assert self._channel is not None
        while not self.ended:
            item = self.absorb(await self._channel.receive(), self._kind.item_type)
            if item is not None:
                return self._kind.extract(item)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream on the daemon's side and forget it."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None if self.ended else self.stream_id)
        self.ended = True


class SyncStream(_StreamState, Generic[T]):
    """A blocking iterator over a daemon stream; use it as ``with``."""

    def __init__(self, opener: Callable[[], SyncChannel], kind: StreamKind[T]) -> None:
        super().__init__()
        self._opener = opener
        self._kind = kind
        self._channel: SyncChannel | None = None

    @property
    def dropped(self) -> int:
        return self._lagged + (self._channel.dropped if self._channel else 0)

    def open(self) -> None:
        if self._channel is not None:
            return
        self._channel = self._opener()
        while self.stream_id is None and not self.ended:
            if self.absorb(self._channel.receive(), self._kind.item_type) is not None:
                raise ProtocolError("stream item before stream_started")

    def __enter__(self) -> SyncStream[T]:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        self.open()
        assert self._channel is not None
        while not self.ended:
            item = self.absorb(self._channel.receive(), self._kind.item_type)
            if item is not None:
                return self._kind.extract(item)
        raise StopIteration

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close(None if self.ended else self.stream_id)
        self.ended = True
