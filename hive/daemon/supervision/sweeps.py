"""Stops asked in the same moment reach their runner together, in one sweep.

Each service's stop runs in its own owner (see :mod:`.jobs`), but a runner stops many
instances far faster in one ``stop_many`` than in one call per instance: the script
runner reads the process table once per sweep, not once per service. So a stop hands
its handles to :class:`StopSweeps`; the first stop of a moment opens a sweep, lets the
stops that become ready in the same moment join it (it waits while others keep
joining, never for a stop that is not on its way), then sends them all at once.

Nothing here waits on another job: a sweep closes as soon as no new stop joins during
a pass of the event loop, so two commands can never wait on each other through it.

Bench: ``bench/peers.py`` "stop of 100" (one owner per service sent 100 sweeps of one
handle: 9x the raw floor, against 2.4x with this).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.lowlevel

from runners.base import ServiceHandle

__all__ = ["StopSweeps", "SweepKey"]

log = logging.getLogger("hive.supervisor")

# (runner name, stop signal, grace): the stops that can go in one runner call.
SweepKey = tuple[str, int, float]
# Stops the handles through their runner; returns why each one not stopped was not.
StopMany = Callable[[SweepKey, list[ServiceHandle]], Awaitable[dict[int, str]]]


class _Sweep:
    def __init__(self) -> None:
        self.handles: list[ServiceHandle] = []
        self.failed: dict[int, str] = {}
        self.done = anyio.Event()


class StopSweeps:
    def __init__(self, stop_many: StopMany) -> None:
        self._stop_many = stop_many
        self._open: dict[SweepKey, _Sweep] = {}

    async def stop(self, key: SweepKey, handles: Sequence[ServiceHandle]) -> dict[int, str]:
        """Stop ``handles`` (with others of the same moment); why each one that was not
        stopped was not, by ``id(handle)``."""
        sweep = self._open.get(key)
        if sweep is not None:  # one is gathering: join it
            sweep.handles += handles
            await sweep.done.wait()
            return sweep.failed
        sweep = self._open[key] = _Sweep()
        sweep.handles += handles
        try:
            joined = -1
            while joined != len(sweep.handles):  # until a pass of the loop brings no one new
                joined = len(sweep.handles)
                await anyio.lowlevel.checkpoint()
        except BaseException:  # cancelled while gathering: the joiners must not wait for ever
            sweep.failed = {id(handle): "the stop was cancelled" for handle in sweep.handles}
            sweep.done.set()
            raise
        finally:
            del self._open[key]
        try:
            sweep.failed = await self._stop_many(key, sweep.handles)
        finally:
            sweep.done.set()
        return sweep.failed
