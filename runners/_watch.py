"""One watcher for many waiters: how a handle's ``wait()`` may be awaited by several tasks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["SharedWatch"]


class SharedWatch:
    """The first task to wait runs the watch; the others sleep until it returns. If the
    watching task is cancelled, a waiter that is still there runs the watch again, so a
    watch must be resumable (it picks up what an interrupted one left)."""

    def __init__(self) -> None:
        self._watching = False
        self._wake: anyio.Event | None = None

    async def until(self, done: Callable[[], bool], watch: Callable[[], Awaitable[None]]) -> None:
        """Return once ``done()``; ``watch()`` is what makes it so."""
        while not done():
            if self._watching:
                if self._wake is None:
                    self._wake = anyio.Event()
                await self._wake.wait()
                continue
            self._watching = True
            try:
                await watch()
            finally:
                self._watching = False
                wake, self._wake = self._wake, None
                if wake is not None:
                    wake.set()
