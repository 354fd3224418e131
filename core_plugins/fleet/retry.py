"""Episodes of trouble in the fleet's background loops, and the backoff between tries.

etcd and the daemon both go away at times (a member paused, a leader election, a daemon
call that times out). A loop that meets such an error logs it once when the episode
begins, retries with a growing delay, and logs once more when it works again; a long
outage does not fill the log. Any other exception is a bug and ends the plugin.
"""

from __future__ import annotations

import logging

import anyio

from hive_client import HiveError

from .etcd import EtcdError

__all__ = ["EXPECTED", "Episode"]

log = logging.getLogger("hive.plugins.fleet")

# What the world does to a loop: etcd, the daemon, the disk (the state file).
EXPECTED: tuple[type[Exception], ...] = (EtcdError, HiveError, OSError)


class Episode:
    """One loop's run of failures: ``failed`` logs the first, ``ok`` ends the run."""

    def __init__(self, what: str, *, first: float, cap: float) -> None:
        self.what = what
        self.first = first
        self.cap = cap
        self.delay = first
        self.failures = 0
        self.error = ""  # the last error of the open episode, for status

    @property
    def open(self) -> bool:
        return self.failures > 0

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1:
            log.warning("fleet: %s failing: %s; retrying with backoff (logged once until it works)",
                        self.what, self.error)

    def ok(self) -> None:
        if self.failures:
            log.info("fleet: %s works again after %d failures", self.what, self.failures)
        self.failures = 0
        self.error = ""
        self.delay = self.first

    async def backoff(self) -> None:
        """Wait before the next try: ``first``, then twice as long each time, up to ``cap``."""
        await anyio.sleep(self.next_delay())

    def next_delay(self) -> float:
        """The delay ``backoff`` would wait, and grow it (for loops that also wait on events)."""
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay
