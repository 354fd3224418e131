"""A client's request rate: a token bucket that pauses its reading when it is over."""

from __future__ import annotations

import time

import anyio

__all__ = ["RateLimit"]


class RateLimit:
    """A token bucket: ``rate`` requests a second on average, bursts of ``burst``. A
    connection over its rate has its reading paused, so it slows only itself."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return
        await anyio.sleep((1 - self._tokens) / self.rate)
        self._tokens = 0.0
        self._stamp = time.monotonic()
