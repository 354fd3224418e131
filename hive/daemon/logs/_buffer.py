"""The in-memory buffer: each instance's recent lines, in a ring, under two budgets.

Queries (`hive logs`) and the tail of a new stream are answered from memory. Each
instance has a ring of its latest lines, capped by line count (``buffer_lines``) and by
estimated memory (``buffer_bytes``); all rings together stay under a daemon-wide budget
(``buffer_total_bytes``). Over that budget the instance adding lines gives up its oldest
ones first, down to an equal share, so a flooding service cannot push a quiet one's
history out while there is room for both (see ``Buffers.rebalance``).

Memory is estimated, not measured: a line costs its text plus ``LINE_COST``.
The per-line path that appends to a ring is inlined in ``_route.Batch.emit``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from itertools import islice

from hive_client import LogLevel, LogLine, fqn_matches

__all__ = ["DEFAULT_BUFFER_BYTES", "LINE_COST", "RANK", "Buffers", "Ring", "trim"]

# Per-instance cap on the memory a buffer takes (estimated as below); a buffer of long
# lines stays bounded.
DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024
# What a buffered line costs besides its text (the LogLine, its timestamp, the deque
# slot), measured: the estimate that the per-instance and daemon-wide caps count.
LINE_COST = 400

RANK: dict[str, int] = {level.value: level.rank for level in LogLevel}


class Ring:
    """One instance's buffered lines, oldest first, and what they cost."""

    __slots__ = ("bytes", "lines")

    def __init__(self) -> None:
        self.lines: deque[LogLine] = deque()
        self.bytes = 0


def trim(ring: Ring, max_lines: int, max_bytes: int) -> int:
    """Drop the oldest lines over the caps; what that freed (estimated)."""
    lines = ring.lines
    before = ring.bytes
    while lines and (len(lines) > max_lines or ring.bytes > max_bytes):
        ring.bytes -= len(lines.popleft().message) + LINE_COST
    return before - ring.bytes


class Buffers:
    """Every instance's ring, keyed by FQN, and the budgets over them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(1, max_bytes)  # per instance
        self.max_lines = 0  # per instance; set by configure()
        self.total = 1  # every ring together; set by configure()
        self.buffered = 0  # what every ring takes together (estimated)
        self._rings: dict[str, Ring] = {}

    def configure(self, max_lines: int, total: int) -> None:
        """New caps; rings over them are cut now."""
        self.max_lines = max(0, max_lines)
        self.total = max(1, total)
        for ring in self._rings.values():
            self.buffered -= trim(ring, self.max_lines, self.max_bytes)
        if self.buffered > self.total:
            for ring in list(self._rings.values()):
                self.rebalance(ring)

    def add(self, fqn: str) -> Ring:
        ring = self._rings[fqn] = Ring()
        return ring

    def remove(self, fqn: str) -> None:
        ring = self._rings.pop(fqn, None)
        if ring is not None:
            self.buffered -= ring.bytes

    def store(self, ring: Ring, line: LogLine) -> None:
        """Append one line (the slow path: preloads; live lines go through Batch)."""
        ring.lines.append(line)
        cost = len(line.message) + LINE_COST
        ring.bytes += cost
        self.buffered += cost
        self.buffered -= trim(ring, self.max_lines, self.max_bytes)
        if self.buffered > self.total:
            self.rebalance(ring)

    def rebalance(self, ring: Ring) -> None:
        """Over the daemon-wide budget: the instance adding lines gives up its oldest
        ones down to an equal share; one under its share makes the largest buffer do so
        (quiet services keep what they have while there is room)."""
        share = self.total // max(1, len(self._rings))
        if ring.bytes > share:
            self.buffered -= trim(ring, self.max_lines, share)
            if self.buffered <= self.total:
                return
        # Still over: every buffer over 9/10 of its share is cut to that, in one pass, so
        # the next pass is a tenth of the budget away rather than a line.
        target = share * 9 // 10
        for other in self._rings.values():
            if other.bytes > target:
                self.buffered -= trim(other, self.max_lines, target)

    def query(
        self, pattern: str | None, lines: int | None, since: datetime | None, min_rank: int
    ) -> list[LogLine]:
        """Buffered lines of the matching instances, oldest first; ``lines`` keeps the
        last N after filtering."""
        picked: list[list[LogLine]] = []
        for fqn, ring in self._rings.items():
            if not fqn_matches(pattern, fqn):
                continue
            chosen = _pick(ring.lines, min_rank, since, lines)
            if chosen:
                picked.append(chosen)
        if not picked:
            return []
        merged = picked[0] if len(picked) == 1 else list(heapq.merge(*picked, key=_timestamp))
        if lines is not None and len(merged) > lines:
            merged = merged[-lines:]
        return merged

    def __iter__(self) -> Iterator[Ring]:
        return iter(self._rings.values())


def _timestamp(line: LogLine) -> datetime:
    return line.timestamp


def _pick(
    buffer: deque[LogLine], min_rank: int, since: datetime | None, lines: int | None
) -> list[LogLine]:
    if not min_rank and since is None:
        if lines is None:
            return list(buffer)
        if lines >= len(buffer):
            return list(buffer)
        return list(islice(reversed(buffer), lines))[::-1]
    chosen: list[LogLine] = []
    for line in reversed(buffer):
        if RANK[line.level] < min_rank or (since is not None and line.timestamp < since):
            continue
        chosen.append(line)
        if lines is not None and len(chosen) >= lines:
            break
    chosen.reverse()
    return chosen
