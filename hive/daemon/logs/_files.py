"""The files on disk: where they are, log files written and rotated, read back.

Two kinds of file per instance ``source:service#n``:

- capture files, ``<run_dir>/<source>/<service#n>.stdout`` and ``.stderr``: the service
  itself appends to them (``_tail`` follows them);
- the log file, ``<logs_dir>/<source>/<service#n>.log``, with ``.1`` (newest) …
  ``.<keep_files>`` after it: what the daemon made of the output, one line each,
  ``<timestamp> <stream> <level> <text>``. ``LogFile`` writes and rotates it by size
  (``max_file_bytes``) and keeps ``keep_files`` old ones (retention); when an instance
  is first seen, its last lines are read back (``read_recent_lines``) into memory.

Names are FQN parts with unusual characters spelled ``%XX`` (``FileLayout``), so any
FQN maps to one stable, safe file name and back.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

import anyio

__all__ = [
    "FileLayout",
    "LogFile",
    "WriteStats",
    "create_files",
    "read_recent_lines",
    "read_tail_lines",
    "safe_name",
]

logger = logging.getLogger("hive.logs")

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


class WriteStats:
    """Counters shared by every LogFile of a hub, and the hub's hooks into them."""

    __slots__ = ("dropped_bytes", "dropped_lines", "errors", "failing", "last_error", "on_episode", "pressure")

    def __init__(self) -> None:
        self.errors = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0  # lines that could not be written to any log file
        self.failing = 0  # log files whose writes fail now
        self.last_error: str | None = None  # why, while any does
        # (file, began): a file's writes started failing (True) or work again (False).
        self.on_episode: Callable[[LogFile, bool], None] | None = None
        # The file system of this directory may be short of space: (directory, whether
        # a write failed for it, or a rotation is about to happen).
        self.pressure: Callable[[Path, bool], None] | None = None


class LogFile:
    """``path`` plus ``path.1`` (newest) … ``path.<keep>``; lines are queued, then flushed.

    A failed write (ENOSPC, EIO, a vanished directory) drops what was queued, is
    counted (lines, per file and in total), and is logged once per episode; the next
    flush reopens the file and tries again, so writing resumes by itself when there is
    room. The hub hears of each episode's start and end (``WriteStats.on_episode``).
    """

    def __init__(self, path: Path, max_bytes: int, keep: int, stats: WriteStats, fqn: str = "") -> None:
        self.path = path
        self.fqn = fqn
        self.max_bytes = max(1, max_bytes)
        self.keep = max(0, keep)
        self._stats = stats
        self._fd = -1
        self._size = 0
        # Encoded lines waiting for flush(); the hub appends to it directly.
        self.pending: list[bytes] = []
        self._pruned = False
        self.failing = False
        # The current episode of failed writes: lines dropped, since when, why.
        self.dropped_lines = 0
        self.failing_since = 0.0
        self.error = ""
        # A write cut short left half a line at the end of the file.
        self._torn = False

    def reconfigure(self, max_bytes: int, keep: int) -> None:
        """New limits: old files beyond ``keep`` go now; an oversized file rotates on
        its next write."""
        self.max_bytes = max(1, max_bytes)
        self.keep = max(0, keep)
        self._prune()

    def add(self, data: bytes) -> None:
        self.pending.append(data)

    def flush(self) -> None:
        if not self.pending:
            return
        chunks = self.pending
        try:
            self._write(chunks)
        except OSError as exc:
            self._fail(exc, sum(map(len, chunks)), len(chunks))
            return
        finally:
            # Cleared in place: the hub holds a bound ``pending.append``.
            chunks.clear()
        self.recovered()

    def recovered(self) -> None:
        """Writes work again (a flush went through, or another file on this file system
        did): the episode ends, and the hub queues the note that says what was lost."""
        if not self.failing:
            return
        self.failing = False
        self._stats.failing -= 1
        if not self._stats.failing:
            self._stats.last_error = None
        logger.warning("writing %s works again (%d lines were dropped)", self.path, self.dropped_lines)
        if self._stats.on_episode is not None:
            self._stats.on_episode(self, False)  # may queue a line: pending is empty now
        self.dropped_lines = 0

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- internals ------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._pruned:
                self._prune()
            # 0600 like the first file of each service: output may hold secrets, and a
            # file rotated in must not be more readable than the one it replaces.
            self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _write(self, chunks: list[bytes]) -> None:
        fd = self._open()
        batch: list[bytes] = [b"\n"] if self._torn else []
        batch_size = len(batch)
        for chunk in chunks:
            # Rotate before a line that would overflow the file, unless the file is
            # empty (a single line longer than max_bytes gets a file of its own).
            if self._size + batch_size + len(chunk) > self.max_bytes and self._size + batch_size:
                fd = self._write_out(fd, batch)
                batch, batch_size = [], 0
                fd = self._rotate()
            batch.append(chunk)
            batch_size += len(chunk)
        self._write_out(fd, batch)

    def _write_out(self, fd: int, batch: list[bytes]) -> int:
        if not batch:
            return fd
        view = memoryview(b"".join(batch))
        total = len(view)
        while view:
            try:
                written = os.write(fd, view)
            except OSError:
                if len(view) != total:
                    self._torn = True
                raise
            self._size += written
            view = view[written:]
        self._torn = False
        return fd

    def _rotate(self) -> int:
        os.close(self._fd)
        self._fd = -1
        if self._stats.pressure is not None:
            self._stats.pressure(self.path.parent, False)  # old files go first if space is short
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self._numbered(index), self._numbered(index + 1))
            # Someone may have removed it: then start afresh.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self._numbered(1))
        return self._open()

    def numbered(self, index: int) -> Path:
        """The path of old file number ``index`` (1: the newest)."""
        return self._numbered(index)

    def _numbered(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _prune(self) -> None:
        """Drop old files beyond ``keep`` (left from a larger setting).

        Files are numbered without gaps, so the first one missing ends the search: a
        single failed unlink in the usual case, not a listing of the directory.
        """
        self._pruned = True
        index = self.keep + 1
        while True:
            try:
                os.unlink(self._numbered(index))
            except FileNotFoundError:
                return
            except OSError:
                return
            index += 1

    def _fail(self, exc: OSError, size: int, lines: int) -> None:
        stats = self._stats
        stats.errors += 1
        stats.dropped_bytes += size
        stats.dropped_lines += lines
        self.dropped_lines += lines
        self.error = exc.strerror or str(exc)
        stats.last_error = f"{self.error} ({self.path.parent})"
        if self._fd >= 0:
            # Reopen next time: the path may be fixed or replaced meanwhile.
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if not self.failing:
            self.failing = True
            self.failing_since = time.time()
            stats.failing += 1
            logger.error(
                "cannot write %s: %s; logs stay in memory until writing works again",
                self.path,
                self.error,
            )
            if stats.on_episode is not None:
                stats.on_episode(self, True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and stats.pressure is not None:
            stats.pressure(self.path.parent, True)


def read_tail_lines(path: Path, count: int, max_bytes: int) -> list[bytes]:
    """The last ``count`` lines of a regular file, reading at most ``max_bytes``."""
    if count <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return []  # /dev/full and friends: nothing to read back
        pos = info.st_size
        blocks: list[bytes] = []
        newlines = 0
        read = 0
        while pos > 0 and newlines <= count and read < max_bytes:
            step = min(64 * 1024, pos)
            pos -= step
            block = os.pread(fd, step, pos)
            blocks.append(block)
            newlines += block.count(b"\n")
            read += len(block)
    except OSError:
        return []
    finally:
        os.close(fd)
    data = b"".join(reversed(blocks))
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if pos > 0 and lines:
        lines.pop(0)  # starts mid-line
    return lines[-count:]


def read_recent_lines(path: Path, keep: int, count: int, max_bytes: int) -> list[bytes]:
    """The last ``count`` lines of the log file ``path`` and, when it holds fewer (just
    rotated, or small), of ``path.1``, ``path.2`` … up to ``path.<keep>``."""
    raws = read_tail_lines(path, count, max_bytes)
    for index in range(1, max(0, keep) + 1):
        if len(raws) >= count:
            break
        older = path.with_name(f"{path.name}.{index}")
        if not older.exists():
            break
        raws = read_tail_lines(older, count - len(raws), max_bytes) + raws
    return raws


def safe_name(part: str) -> str:
    """A file-name-safe, stable spelling: unusual characters become %XX."""
    if part in ("", ".", ".."):
        return "%" + part.encode().hex().upper() if part else "%"
    return "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in "-_.#@+=") else
        "".join(f"%{byte:02X}" for byte in ch.encode())
        for ch in part
    )  # fmt: skip


def _split_fqn(fqn: str) -> tuple[str, str]:
    source, sep, rest = fqn.partition(":")
    if not sep:
        source, rest = "_", fqn
    return safe_name(source), safe_name(rest)


def create_files(paths: list[Path]) -> None:
    """Create these files (and their directories) if missing; errors are left for the
    start that uses them to report."""
    made: set[Path] = set()
    for path in paths:
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            made.add(path.parent)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            # The start will try again and say what is wrong; nothing to do here.
            logger.debug("cannot prepare %s: %s", path, exc)


class FileLayout:
    """Where each instance's capture and log files are."""

    def __init__(self, logs_dir: Path, run_dir: Path) -> None:
        self.logs_dir = logs_dir
        self.run_dir = run_dir
        self._made_dirs: set[Path] = set()
        self._capture_paths: dict[str, tuple[Path, Path]] = {}

    def capture_paths(self, fqn: str) -> tuple[Path, Path]:
        """Where the instance's stdout and stderr go (the directory exists)."""
        paths = self._capture_paths.get(fqn)
        if paths is None:
            source, name = _split_fqn(fqn)
            directory = self.run_dir / source
            if directory not in self._made_dirs:
                directory.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(directory)
            paths = self._capture_paths[fqn] = (
                directory / f"{name}.stdout",
                directory / f"{name}.stderr",
            )
        return paths

    def log_path(self, fqn: str) -> Path:
        source, name = _split_fqn(fqn)
        return self.logs_dir / source / f"{name}.log"

    async def prepare(self, fqns: Iterable[str]) -> None:
        """Create the capture and log files of these instances, in a worker thread."""
        paths: list[Path] = []
        for fqn in fqns:
            paths.extend(self.capture_paths(fqn))
            paths.append(self.log_path(fqn))
        await anyio.to_thread.run_sync(create_files, paths)

    def log_files_named(self, pattern: str | None) -> Iterator[tuple[str, Path]]:
        """(FQN, log file) of the instances a pattern without wildcards names ("proj:web",
        "web", "proj:web#2"), as far as the file names tell: the files may be gone."""
        if not pattern or any(ch in pattern for ch in "*?["):
            return
        source, sep, service = pattern.partition(":")
        try:
            sources = [source] if sep else [unquote(name) for name in os.listdir(self.logs_dir)]
        except OSError:
            return
        if not sep:
            service = pattern
        base, hash_, _ = service.partition("#")
        for src in sources:
            directory = self.logs_dir / safe_name(src)
            if hash_:
                candidates = [f"{safe_name(service)}.log"]
            else:
                stem = safe_name(base)
                try:
                    candidates = [
                        name
                        for name in os.listdir(directory)
                        if name == f"{stem}.log" or (name.startswith(f"{stem}#") and name.endswith(".log"))
                    ]
                except OSError:
                    continue
            for name in candidates:
                yield f"{src}:{unquote(name[: -len('.log')])}", directory / name
