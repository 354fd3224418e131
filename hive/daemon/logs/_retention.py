"""Retention under disk pressure: old log files go first when free space runs low.

As journald's ``SystemKeepFree=``: the daemon keeps ``logs.keep_free_bytes`` free on the
file system of the log files (by default 15 % of its size, at most 4 GiB). Whenever a log
file rotates, or a write fails for want of space, free space is looked at (one
``statvfs``); below the mark, rotated files are removed, the oldest of every service
first (all the ``.5`` files, then the ``.4`` ...), until the mark is met or only the
current files are left. One flooding service then cannot fill the disk with Hive's own
logs: what it writes replaces its own (and others') history rather than the free space.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from ._files import LogFile

__all__ = ["DiskGuard", "Reclaimed"]

# At most one look at the disk per this many seconds while it stays short of space.
_INTERVAL = 1.0
_DEFAULT_SHARE = 0.15
_DEFAULT_CAP = 4 * 1024 * 1024 * 1024


class Reclaimed:
    """What one reclaim removed, and the free space it found."""

    __slots__ = ("free", "removed", "target")

    def __init__(self, free: int, target: int) -> None:
        self.free = free
        self.target = target
        self.removed: dict[LogFile, list[str]] = {}


class DiskGuard:
    """Decides when free space is short and removes old log files to make room."""

    def __init__(self, keep_free: int | None) -> None:
        self.keep_free = keep_free
        self._checked_at = 0.0
        self.removed_files = 0  # since the daemon started

    def space(self, directory: Path) -> tuple[int, int] | None:
        """(free bytes, the mark) on ``directory``'s file system; None if unknown."""
        try:
            info = os.statvfs(directory)
        except OSError:
            return None
        free = info.f_bavail * info.f_frsize
        if self.keep_free is not None:
            return free, max(0, self.keep_free)
        size = info.f_blocks * info.f_frsize
        return free, min(int(size * _DEFAULT_SHARE), _DEFAULT_CAP)

    def reclaim(self, directory: Path, files: Iterable[LogFile], keep: int, *, failing: bool) -> Reclaimed | None:
        """Remove old files of ``files`` (numbered up to ``keep``), oldest first, while
        free space is under the mark; None when it was not looked at or is not short.

        At each rotation it looks (one statvfs per ``max_file_bytes`` written); after a
        failed write at most once a second (those come with every line while full)."""
        now = time.monotonic()
        if failing and now - self._checked_at < _INTERVAL:
            return None
        self._checked_at = now
        space = self.space(directory)
        if space is None or space[0] >= space[1]:
            return None
        result = Reclaimed(*space)
        candidates = list(files)
        for index in range(max(0, keep), 0, -1):
            for file in candidates:
                path = file.numbered(index)
                try:
                    size = os.stat(path).st_blocks * 512
                    os.unlink(path)
                except OSError:
                    continue
                result.removed.setdefault(file, []).append(path.name)
                result.free += size
                self.removed_files += 1
                if result.free >= result.target:
                    return result
        return result
