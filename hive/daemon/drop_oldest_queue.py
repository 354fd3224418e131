"""A bounded queue whose producer never waits: when it is full, the oldest items go.

Every live feed of the daemon (an event subscription, a log stream, a plugin's events)
has one producer that must not slow down for anyone (the event bus, the log pump) and a
reader that may fall behind (a slow client, a stuck plugin). So ``offer`` never blocks
and never fails: past the bound it drops the oldest items and counts them. The reader
learns how many it lost from ``take_dropped`` (a stream sends ``stream_lagged``) and
carries on with the newest items, which are the ones worth having.

The bound counts items, or, given a ``cost`` function, the sum of the items' costs
(bytes, say); the newest item is always kept, even one that alone is over the bound.
``close`` ends the feed: readers get what is left, then ``anyio.EndOfStream``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, Self, TypeVar

import anyio

__all__ = ["DropOldestQueue"]

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """Holds at most ``limit`` items (or ``limit`` of cost); ``offer`` drops the oldest."""

    def __init__(self, limit: int, *, cost: Callable[[T], int] | None = None) -> None:
        self._items: deque[T] = deque()
        self._limit = max(1, limit)
        # With a cost, the bound is on the sum; ``cost`` must give an item the same
        # value each time (it is asked again when the item leaves).
        self._cost = cost
        self._held = 0
        # Created by the first getter that waits: offering needs no event loop.
        self._wakeup: anyio.Event | None = None
        self.dropped = 0  # dropped since the last take_dropped()
        self._closed = False

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def pending(self) -> int:
        """Items held, not yet taken."""
        return len(self._items)

    @property
    def held_cost(self) -> int:
        """What the held items cost together (their number, without a cost function)."""
        return len(self._items) if self._cost is None else self._held

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: T) -> None:
        """Add ``item``, dropping (and counting) the oldest ones over the bound.
        Once closed, the queue takes nothing more."""
        if self._closed:
            return
        items = self._items
        cost = self._cost
        if cost is None:
            # The common case (every feed today), kept to one comparison: this runs for
            # every log line of a followed service, once per subscriber.
            if len(items) >= self._limit:
                items.popleft()
                self.dropped += 1
        else:
            self._held += cost(item)
            while items and self._held > self._limit:
                self._held -= cost(items.popleft())
                self.dropped += 1
        items.append(item)
        if self._wakeup is not None:
            self._wakeup.set()

    def resize(self, limit: int) -> None:
        """A new bound (a reload); items over it, oldest first, are dropped and counted."""
        self._limit = max(1, limit)
        items = self._items
        while items and (len(items) if self._cost is None else self._held) > self._limit:
            self._take()
            self.dropped += 1

    def take_dropped(self) -> int:
        """How many items were dropped since the last call; resets the count."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    def get_nowait(self) -> T:
        """The oldest item; ``anyio.WouldBlock`` if there is none yet,
        ``anyio.EndOfStream`` if there will be none."""
        if self._items:
            return self._take()
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def get(self) -> T:
        """The oldest item; waits for one. ``anyio.EndOfStream`` once closed and empty."""
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            # Concurrent getters share one event, so none waits on one that was replaced.
            if self._wakeup is None or self._wakeup.is_set():
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._take()

    def close(self) -> None:
        """End the feed; waiting getters wake, and get what is left before EndOfStream."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    def _take(self) -> T:
        item = self._items.popleft()
        if self._cost is not None:
            self._held -= self._cost(item)
        return item

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
