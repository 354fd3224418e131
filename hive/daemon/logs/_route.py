"""The per-line route: raw bytes become a LogLine that goes to the instance's ring,
to its live subscribers, and to its log file, in that order.

This is the hub's hot path (it runs once per line a service writes), so ``Batch.emit``
does the three deliveries inline rather than calling into ``_buffer``, ``_fanout`` and
``_files`` per line; the rules it inlines are documented in those modules. Lines read
together share one ``Batch``: one timestamp (the time the daemon read them), one lookup
of the matching subscriptions, one prefix per level for the log file.

``Instance`` is one service instance's place in the pipeline: its ring (``_buffer``),
its log file (``_files``), and the capture files being followed (``_tail``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hive_client import LogLine

from ._buffer import LINE_COST, RANK, Buffers, Ring, trim
from ._fanout import Fanout, LogSubscription
from ._files import LogFile
from ._parse import format_timestamp, parse_line

if TYPE_CHECKING:
    from ._tail import Capture

__all__ = ["Batch", "Instance", "LineRouter"]


class Instance:
    """One service instance (``source:service#n``) as the log pipeline knows it."""

    __slots__ = ("base", "captures", "file", "fqn", "memory", "ring", "saved_identities", "saved_offsets")

    def __init__(self, fqn: str, ring: Ring, file: LogFile) -> None:
        self.fqn = fqn
        self.base = fqn.partition("#")[0]
        self.ring = ring
        self.file = file
        # Set while followed (by _tail); what was consumed stays when unfollowed.
        self.captures: tuple[Capture, Capture] | None = None
        # Memory captures (script services), by the run that writes them: during a
        # rollout two generations of one instance each have their own.
        self.memory: dict[object, tuple[Capture, Capture]] = {}
        self.saved_offsets = (0, 0)
        self.saved_identities: tuple[tuple[int, int], tuple[int, int]] | None = None


class LineRouter:
    """Where lines go: the buffers and the subscribers; counts every line routed."""

    def __init__(self, buffers: Buffers, fanout: Fanout) -> None:
        self.buffers = buffers
        self.fanout = fanout
        self.lines = 0

    def batch(self, inst: Instance, stream: str) -> Batch:
        return Batch(self, inst, stream)


class Batch:
    """Lines read together share a timestamp (the time the daemon read them)."""

    __slots__ = (
        "buffers",
        "inst",
        "lines",
        "max_bytes",
        "max_lines",
        "prefixes",
        "router",
        "stream",
        "subs",
        "to_file",
        "ts",
        "ts_text",
    )

    def __init__(self, router: LineRouter, inst: Instance, stream: str) -> None:
        self.router = router
        self.inst = inst
        self.stream = stream
        self.ts = datetime.now(UTC)
        self.ts_text = format_timestamp(self.ts)
        self.prefixes: dict[str, bytes] = {}
        self.subs: list[LogSubscription] = router.fanout.matching(inst.fqn)
        self.to_file = inst.file.pending.append
        self.buffers = router.buffers
        self.lines = inst.ring.lines
        self.max_lines = router.buffers.max_lines
        self.max_bytes = router.buffers.max_bytes

    def emit(self, raw: bytes, level: str | None = None) -> str:
        """One line out; ``level`` forces it (notes, pieces of a cut line)."""
        if raw[-1:] == b"\r":
            raw = raw.rstrip(b"\r")
        text = raw.decode("utf-8", "replace")
        fields: dict[str, Any] | None = None
        if level is None:
            level, message, fields = parse_line(text)
        else:
            message = text
        line = LogLine(
            timestamp=self.ts,
            level=level,
            service_fqn=self.inst.fqn,
            message=message,
            fields=fields,
            stream=self.stream,
        )
        # Inlined Buffers.store: this runs for every line.
        ring = self.inst.ring
        buffers = self.buffers
        self.lines.append(line)
        cost = len(message) + LINE_COST
        ring.bytes += cost
        buffers.buffered += cost
        if len(self.lines) > self.max_lines or ring.bytes > self.max_bytes:
            buffers.buffered -= trim(ring, self.max_lines, self.max_bytes)
        if buffers.buffered > buffers.total:
            buffers.rebalance(ring)
        self.router.lines += 1
        # Inlined fan-out: the level filter, then the subscriber's drop-oldest queue.
        if self.subs:
            rank = RANK[level]
            for sub in self.subs:
                if rank >= sub.min_rank:
                    sub.offer(line)
        prefix = self.prefixes.get(level)
        if prefix is None:
            prefix = self.prefixes[level] = f"{self.ts_text} {self.stream} {level} ".encode()
        self.to_file(prefix + raw + b"\n")
        return level
