"""Memory that a burst of large client buffers took goes back to the system afterwards.

Two behaviours of glibc's malloc kept it (``bench/attacks.py --only "8 MiB"`` and
``--only pipelined``, figures in docs/reliability.md):

- A request of at least ``M_MMAP_THRESHOLD`` (128 KiB at first) gets its own mapping,
  unmapped when freed; but each time such a block is freed the threshold rises to its size
  (up to 32 MiB), to spare later mmap calls. After one client's unfinished 8 MiB frame was
  freed, the next ones came from the heap and stayed there: RSS up to +107 MiB above idle
  after the attacker left. :func:`fix_mmap_threshold` turns that adjustment off: a buffer
  of 1 MiB or more (a frame being received, a large answer) always gets its own mapping.
- Freed memory inside the heap (not at its top) stays with the process: +6 MiB after
  either attack. :class:`Trimmer` calls ``malloc_trim`` once the bytes held for clients
  fall back from a peak (see ``client_limits.ClientBudget``): then +1 MiB.

``MALLOC_MMAP_THRESHOLD_`` in the daemon's environment wins (glibc reads it itself); with
another C library (no ``mallopt``, no ``malloc_trim``) both do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.to_thread

__all__ = ["MMAP_THRESHOLD", "TRIM_DELAY", "Trimmer", "fix_mmap_threshold"]

log = logging.getLogger("hive.daemon")

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
# After the release that asks for a trim: the closes of many connections make one trim,
# and the buffers released are freed by then (a connection releases before it returns).
TRIM_DELAY = 1.0


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None
    return function


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold) == 1


class Trimmer:
    """Gives freed heap memory back to the system, once, after clients released much."""

    def __init__(self) -> None:
        self._trim = _libc_function("malloc_trim")
        self._pending = False
        self.trims = 0  # how many ran (tests, logs)

    def request(self, tasks: anyio.abc.TaskGroup) -> None:
        """Trim soon (in ``tasks``); nothing if one is already coming."""
        if self._trim is None or self._pending:
            return
        self._pending = True
        tasks.start_soon(self._run)

    async def _run(self) -> None:
        assert self._trim is not None
        try:
            await anyio.sleep(TRIM_DELAY)
            # In a worker thread: it walks the heap (a few ms), without the GIL (ctypes).
            await anyio.to_thread.run_sync(self._trim, 0)
            self.trims += 1
        finally:
            self._pending = False
