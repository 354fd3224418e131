"""CPU and memory of each service's process tree, for `hive ui`.

The daemon streams states, not load: load is a rate, so someone has to read the
counters twice. The dashboard does it here, from the pids the service stream gave it,
one sample every few seconds (the one thing on it that is sampled): the
CPU share since the last sample (100% = one core busy) and the resident memory, each
summed over the process and its descendants (a shell's child, a worker pool).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil

__all__ = ["Usage", "UsageSampler", "format_cpu", "format_memory"]


@dataclass(frozen=True)
class Usage:
    cpu_percent: float | None  # None until a second sample of the same pid
    rss_bytes: int


@dataclass
class UsageSampler:
    """Remembers each pid's last CPU time, so the next sample gives a rate."""

    _seen: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (wall, cpu s)

    def sample(self, pids: dict[str, int]) -> dict[str, Usage]:
        """The usage of each service (fqn -> pid); a process gone meanwhile is left out."""
        now = time.monotonic()
        found: dict[str, Usage] = {}
        seen: dict[int, tuple[float, float]] = {}
        for fqn, pid in pids.items():
            measured = _tree(pid)
            if measured is None:
                continue
            cpu_seconds, rss = measured
            seen[pid] = (now, cpu_seconds)
            before = self._seen.get(pid)
            percent = None
            if before is not None and now > before[0]:
                percent = max(0.0, (cpu_seconds - before[1]) / (now - before[0]) * 100)
            found[fqn] = Usage(percent, rss)
        self._seen = seen
        return found


def _tree(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of ``pid`` and its descendants; None when it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu = 0.0
    rss = 0
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += process.memory_info().rss
        except psutil.Error:
            continue  # a child that ended between the listing and the read
    return cpu, rss


def format_cpu(usage: Usage | None) -> str:
    if usage is None or usage.cpu_percent is None:
        return "-"
    return f"{usage.cpu_percent:.0f}%"


def format_memory(usage: Usage | None) -> str:
    if usage is None:
        return "-"
    mib = usage.rss_bytes / (1024 * 1024)
    return f"{mib:.1f} MiB" if mib < 1024 else f"{mib / 1024:.2f} GiB"
