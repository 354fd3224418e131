"""LogHub: follow services' capture files, keep their lines, serve queries and streams.

Each service instance writes stdout and stderr into two capture files it holds open
with O_APPEND; the daemon never sits on a pipe, so its own crash or restart cannot
block or kill a service. The hub watches those files with one inotify descriptor,
reads new bytes in bounded chunks, and turns them into LogLines that go to a
per-instance ring buffer, to rotated log files, and to live subscriptions.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from hive_client import LogLevel, LogLine, fqn_matches

from ..settings import LogsSection
from ._files import LogFile, WriteStats, read_tail_lines
from ._parse import format_timestamp, parse_file_line, parse_line
from ._sys import IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, Inotify, punch_hole

__all__ = ["CHUNK_BYTES", "PRELOAD_LINES", "LogHub", "LogSubscription"]

logger = logging.getLogger("hive.logs")

# One read; the pump yields to the loop between chunks so a flood can't starve others.
CHUNK_BYTES = 256 * 1024
# At most this many lines come back from the log file when an instance is first seen.
PRELOAD_LINES = 1000
# Free consumed capture bytes in steps of this much (each punch is a syscall).
_PUNCH_STEP = 1024 * 1024
# One "skipped N bytes" note per capture file per this many seconds, at most.
_SKIP_NOTE_INTERVAL = 1.0
# Per-instance cap on the memory a buffer takes (estimated as below); a buffer of long
# lines stays bounded.
DEFAULT_BUFFER_BYTES = 16 * 1024 * 1024
# What a buffered line costs besides its text (the LogLine, its timestamp, the deque
# slot), measured: the estimate that the per-instance and daemon-wide caps count.
LINE_COST = 400

_RANK: dict[str, int] = {level.value: level.rank for level in LogLevel}
_WARN = LogLevel.WARN.value


def _level_value(level: LogLevel | str) -> str:
    return level.value if isinstance(level, LogLevel) else LogLevel.parse(level).value


def _min_rank(level: LogLevel | str | None) -> int:
    return 0 if level is None else _RANK[_level_value(level)]


def _safe_name(part: str) -> str:
    """A file-name-safe, stable spelling: unusual characters become %XX."""
    if part in ("", ".", ".."):
        return "%" + part.encode().hex().upper() if part else "%"
    return "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in "-_.#@+=") else
        "".join(f"%{byte:02X}" for byte in ch.encode())
        for ch in part
    )  # fmt: skip


def _create_files(paths: list[Path]) -> None:
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


def _split_fqn(fqn: str) -> tuple[str, str]:
    source, sep, rest = fqn.partition(":")
    if not sep:
        source, rest = "_", fqn
    return _safe_name(source), _safe_name(rest)


class LogSubscription:
    """A live view of matching lines, bounded: when the reader falls behind, the
    oldest lines are dropped and counted (``take_dropped``), as with events."""

    def __init__(self, hub: LogHub, pattern: str | None, min_rank: int, maxlen: int) -> None:
        self._hub = hub
        self.pattern = pattern
        self.min_rank = min_rank
        self._items: deque[LogLine] = deque()
        self._maxlen = max(1, maxlen)
        self._wakeup: anyio.Event | None = None
        self.dropped = 0
        self.closed = False

    def matches(self, fqn: str) -> bool:
        return fqn_matches(self.pattern, fqn)

    def offer(self, line: LogLine) -> None:
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
        self._items.append(line)
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._items)

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def get_nowait(self) -> LogLine | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> LogLine:
        """The next line; waits for one. EndOfStream once closed and emptied."""
        while not self._items:
            if self.closed:
                raise anyio.EndOfStream
            # Concurrent getters share one event, so none waits on a discarded one.
            if self._wakeup is None or self._wakeup.is_set():
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._items.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._remove_subscription(self)
        if self._wakeup is not None:
            self._wakeup.set()

    def __enter__(self) -> LogSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __aiter__(self) -> LogSubscription:
        return self

    async def __anext__(self) -> LogLine:
        try:
            return await self.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class _Capture:
    """One followed capture file (an instance's stdout or stderr)."""

    __slots__ = (
        "block",
        "can_punch",
        "cont_level",
        "fd",
        "identity",
        "inst",
        "partial",
        "path",
        "pending",
        "pos",
        "punched",
        "resync",
        "skip_noted_at",
        "skip_pending",
        "stream",
        "wd",
    )

    def __init__(self, inst: _Instance, stream: str, path: Path, fd: int) -> None:
        self.inst = inst
        self.stream = stream
        self.path = path
        self.fd = fd
        self.pending = False  # followed, not opened yet (see LogHub._open_capture)
        self.can_punch = True
        self.identity = (0, 0)  # (st_dev, st_ino): offsets only mean something for this file
        self.wd = -1
        self.pos = 0  # bytes read from the file
        self.partial = b""  # read, but no newline yet
        self.cont_level: str | None = None  # level of a line whose first pieces went out
        self.resync = False  # started mid-line: drop bytes up to the next newline
        self.block = 4096
        self.can_punch = True
        self.punched = 0
        self.skip_pending = 0
        self.skip_noted_at = 0.0

    @property
    def consumed(self) -> int:
        """Bytes turned into lines: where a successor resumes without duplicates."""
        return self.pos if self.resync else self.pos - len(self.partial)


class _Instance:
    __slots__ = (
        "base",
        "buffer",
        "buffer_bytes",
        "captures",
        "file",
        "fqn",
        "saved_identities",
        "saved_offsets",
        "subs",
        "subs_version",
    )

    def __init__(self, fqn: str, file: LogFile) -> None:
        self.fqn = fqn
        self.base = fqn.partition("#")[0]
        self.buffer: deque[LogLine] = deque()
        self.buffer_bytes = 0
        self.file = file
        self.captures: tuple[_Capture, _Capture] | None = None
        self.saved_offsets = (0, 0)
        self.saved_identities: tuple[tuple[int, int], tuple[int, int]] | None = None
        self.subs: list[LogSubscription] = []
        self.subs_version = -1


class _Batch:
    """Lines read together share a timestamp (the time the daemon read them)."""

    __slots__ = (
        "buffer",
        "hub",
        "inst",
        "max_bytes",
        "max_lines",
        "prefixes",
        "stream",
        "subs",
        "to_file",
        "ts",
        "ts_text",
    )

    def __init__(self, hub: LogHub, inst: _Instance, stream: str) -> None:
        self.hub = hub
        self.inst = inst
        self.stream = stream
        self.ts = datetime.now(UTC)
        self.ts_text = format_timestamp(self.ts)
        self.prefixes: dict[str, bytes] = {}
        self.subs = hub._subscriptions_for(inst)
        self.to_file = inst.file.pending.append
        self.buffer = inst.buffer
        self.max_lines = hub._buffer_lines
        self.max_bytes = hub._buffer_bytes

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
        # Inlined _store: this runs for every line.
        inst = self.inst
        hub = self.hub
        self.buffer.append(line)
        cost = len(message) + LINE_COST
        inst.buffer_bytes += cost
        hub._buffered += cost
        if len(self.buffer) > self.max_lines or inst.buffer_bytes > self.max_bytes:
            hub._buffered -= _trim(inst, self.max_lines, self.max_bytes)
        if hub._buffered > hub._buffer_total:
            hub._rebalance(inst)
        hub._lines += 1
        if self.subs:
            rank = _RANK[level]
            for sub in self.subs:
                if rank >= sub.min_rank:
                    sub.offer(line)
        prefix = self.prefixes.get(level)
        if prefix is None:
            prefix = self.prefixes[level] = f"{self.ts_text} {self.stream} {level} ".encode()
        self.to_file(prefix + raw + b"\n")
        return level


class LogHub:
    """The daemon's log pipeline. See the package docstring for the life cycle."""

    def __init__(
        self,
        logs_dir: Path,
        run_dir: Path,
        settings: LogsSection,
        *,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        max_backlog_bytes: int | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.logs_dir = Path(logs_dir)
        self.run_dir = Path(run_dir)
        self._buffer_bytes = max(1, buffer_bytes)
        self._buffered = 0  # what every instance's buffer takes together (estimated)
        self._chunk = max(4096, chunk_bytes)
        self._backlog_option = max_backlog_bytes
        self._apply(settings)
        self._instances: dict[str, _Instance] = {}
        self._forgotten: set[str] = set()  # forget()-ten: not brought back from files
        self._subscriptions: set[LogSubscription] = set()
        self._subs_version = 0
        self._inotify: Inotify | None = None
        # One watch per capture directory (not per file): a start costs no syscall for it.
        self._dir_watches: dict[Path, int] = {}
        self._by_wd: dict[int, dict[bytes, _Capture]] = {}
        self._followed: dict[_Capture, None] = {}
        self._dirty: dict[_Capture, None] = {}  # insertion-ordered set: round robin
        self._wake: anyio.Event | None = None
        self._closed = False
        self._made_dirs: set[Path] = set()
        self._capture_paths: dict[str, tuple[Path, Path]] = {}
        self._unflushed: dict[LogFile, None] = {}
        self._write_stats = WriteStats()
        self._lines = 0
        self._bytes_read = 0
        self._skipped_bytes = 0

    def _apply(self, settings: LogsSection) -> None:
        self.settings = settings
        self._buffer_lines = max(0, settings.buffer_lines)
        self._buffer_total = max(1, settings.buffer_total_bytes)
        self._max_line = max(16, settings.max_line_bytes)
        # Past this much unread data, older bytes are skipped: they would be rotated
        # out of the log files before anyone could read them anyway.
        retained = (max(0, settings.keep_files) + 1) * max(1, settings.max_file_bytes)
        self._max_backlog = max(
            self._backlog_option if self._backlog_option is not None else retained,
            4 * self._chunk,
            2 * self._max_line,
        )

    def reconfigure(self, settings: LogsSection) -> None:
        """Apply new ``[logs]`` settings (a daemon reload) to everything running."""
        self._apply(settings)
        for inst in self._instances.values():
            inst.file.reconfigure(settings.max_file_bytes, settings.keep_files)
            self._buffered -= _trim(inst, self._buffer_lines, self._buffer_bytes)
        if self._buffered > self._buffer_total:
            for inst in list(self._instances.values()):
                self._rebalance(inst)

    # -- life cycle -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch followed files until cancelled; then close files and end streams."""
        inotify = self._get_inotify()
        self._wake = anyio.Event()
        if self._dirty:
            self._wake.set()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, inotify)
                task_status.started()
                await self._pump()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        for inst in self._instances.values():
            self._unfollow(inst)
            inst.file.close()
        for sub in list(self._subscriptions):
            sub.close()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._by_wd.clear()
        self._dir_watches.clear()

    def _get_inotify(self) -> Inotify:
        if self._inotify is None:
            self._inotify = Inotify()
        return self._inotify

    async def _watch(self, inotify: Inotify) -> None:
        while True:
            await anyio.wait_readable(inotify.fd)
            self._take_events(inotify)

    def _take_events(self, inotify: Inotify) -> None:
        """Mark dirty the captures the queued events name, and wake the pump for them
        (whoever read the queue: the descriptor is not readable for them any more)."""
        for wd, mask, name in inotify.events():
            if mask & IN_Q_OVERFLOW:
                logger.warning("inotify queue overflowed: re-reading every followed file")
                self._dirty.update(self._followed)
                continue
            if mask & IN_IGNORED:
                # Its directory went away: watch the new one when a capture reopens.
                self._dir_watches = {d: w for d, w in self._dir_watches.items() if w != wd}
                continue
            files = self._by_wd.get(wd)
            cap = files.get(name) if files is not None else None
            if cap is not None:
                self._dirty[cap] = None
        if self._dirty and self._wake is not None:
            self._wake.set()

    async def _pump(self) -> None:
        while True:
            if self._unflushed:
                self._flush_notes()
            if not self._dirty:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            cap = next(iter(self._dirty))
            del self._dirty[cap]
            try:
                if cap.pending and not self._activate(cap):
                    continue
                more = cap.fd >= 0 and self._read_chunk(cap)
            except Exception:
                # A bug on one service's output must not end logging for all of them.
                logger.exception("log pipeline failed on %s", cap.path)
                more = False
            if more:
                self._dirty[cap] = None  # more waiting: back of the line
            await anyio.lowlevel.checkpoint()

    # -- paths ----------------------------------------------------------------------

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

    async def prepare(self, fqns: Iterable[str]) -> None:
        """Create the capture and log files of these instances before they start.

        Creating a file costs a new inode, which on some file systems takes longer than
        starting the process; done here, in a worker thread and for a whole source at
        once, it is off the path of `start`. (A start without it creates them itself.)
        """
        paths: list[Path] = []
        for fqn in fqns:
            paths.extend(self.capture_paths(fqn))
            paths.append(self.log_path(fqn))
        await anyio.to_thread.run_sync(_create_files, paths)

    def log_path(self, fqn: str) -> Path:
        source, name = _split_fqn(fqn)
        return self.logs_dir / source / f"{name}.log"

    # -- following ------------------------------------------------------------------

    def follow(self, fqn: str, offsets: tuple[int, int] | None = None) -> None:
        """Follow the instance's capture files from ``offsets`` (bytes).

        Without offsets, continue where this hub last stopped for the instance
        (0, 0 for one it has not seen). Bytes this hub already consumed from the
        same files are never read twice, whatever ``offsets`` says: following again
        after a restart of the service continues after the previous run's output
        (capture files are appended to); a replaced or truncated file is read from
        its start. Missing files are created. Following a followed instance does
        nothing.
        """
        if self._closed:
            return  # the hub has stopped (daemon shutdown): nothing would read them
        inst = self._instance(fqn)
        self._forgotten.discard(fqn)
        if inst.captures is not None:
            return
        # Without offsets, start at 0: ``known`` moves that past what this hub
        # consumed, as long as the files are the same ones.
        start = offsets if offsets is not None else (0, 0)
        known = inst.saved_identities
        out_path, err_path = self.capture_paths(fqn)
        out = self._open_capture(
            inst, "stdout", out_path, start[0], known and (known[0], inst.saved_offsets[0])
        )
        try:
            err = self._open_capture(
                inst, "stderr", err_path, start[1], known and (known[1], inst.saved_offsets[1])
            )
        except BaseException:
            self._close_capture(out)
            raise
        inst.captures = (out, err)
        if self._wake is not None:
            self._wake.set()

    def unfollow(self, fqn: str) -> None:
        """Stop watching (call drain first); the buffer and offsets stay."""
        inst = self._instances.get(fqn)
        if inst is not None:
            self._unfollow(inst)

    def offsets(self, fqn: str) -> tuple[int, int]:
        """Bytes of (stdout, stderr) turned into lines; persist these to resume."""
        inst = self._instances.get(fqn)
        if inst is None:
            return (0, 0)
        if inst.captures is None:
            return inst.saved_offsets
        return (inst.captures[0].consumed, inst.captures[1].consumed)

    async def drain(self, fqn: str) -> None:
        """Read what is in the capture files now; an unfinished last line counts too.
        A cancel does not cut it short."""
        inst = self._instances.get(fqn)
        if inst is None or inst.captures is None:
            return
        inotify = self._inotify
        if inotify is not None and any(cap.pending and cap.wd >= 0 for cap in inst.captures):
            # A write queues its event before write() returns, so once the writer has
            # exited the queue names every capture written to: a pending one it does
            # not name is untouched (one read for both, rather than a stat of each).
            self._take_events(inotify)
        for cap in inst.captures:
            if cap.pending:
                if cap.wd >= 0 and inotify is not None:
                    untouched = cap not in self._dirty
                else:
                    try:
                        untouched = os.stat(cap.path).st_size <= cap.pos
                    except OSError:
                        untouched = True
                if untouched or not self._activate(cap):
                    continue  # nothing was written since it was followed
            if cap.fd < 0:
                continue
            # Skips so far are older than what is left: say so before it, so the
            # service's own last line stays the last line.
            self._note_skipped(cap, force=True)
            end = os.fstat(cap.fd).st_size
            while cap.fd >= 0:
                self._dirty.pop(cap, None)
                more = self._read_chunk(cap, draining=True)
                if not more or cap.pos >= end:
                    break
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
            if cap.fd >= 0:
                self._finish_line(cap)
                self._punch(cap, force=True)
        inst.file.flush()

    def restore(self, fqn: str) -> None:
        """Load the instance's recent lines from its log file without following it
        (a stopped service after a daemon restart)."""
        self._instance(fqn)

    def forget(self, fqn: str) -> None:
        """Drop the buffers of ``source:service`` (all instances) or one instance.

        Its log files stay on disk, but queries no longer bring them back."""
        self._forgotten.add(fqn)
        for key in [k for k, inst in self._instances.items() if fqn in (k, inst.base)]:
            inst = self._instances.pop(key)
            self._unfollow(inst)  # may note skipped bytes into it: counted before it goes
            self._buffered -= inst.buffer_bytes
            inst.file.close()
            self._forgotten.add(key)

    def captured(self, fqn: str, stream: str, text: str) -> None:
        """A line the daemon captured itself for an instance or a source (hook and build
        output): ``stream`` names its origin (``hook``, ``build``), the level is guessed
        from the text as for service output."""
        if self._closed:
            return
        self._forgotten.discard(fqn)
        inst = self._instance(fqn)
        _Batch(self, inst, stream).emit(text.encode("utf-8", "replace"))
        if self._wake is None:
            inst.file.flush()
            return
        self._unflushed[inst.file] = None
        self._wake.set()

    def note(self, fqn: str, message: str, level: LogLevel | str = LogLevel.INFO) -> None:
        """The daemon's own line about an instance (stream "hive")."""
        self._forgotten.discard(fqn)
        self._note(self._instance(fqn), message, _level_value(level))

    # -- reading --------------------------------------------------------------------

    def query(
        self,
        pattern: str | None = None,
        lines: int | None = None,
        since: datetime | None = None,
        level: LogLevel | str | None = None,
    ) -> list[LogLine]:
        """Buffered lines, oldest first; ``lines`` keeps the last N after filtering."""
        if lines is not None and lines <= 0:
            return []
        min_rank = _min_rank(level)
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        self._restore_named(pattern)
        picked: list[list[LogLine]] = []
        for inst in self._instances.values():
            if not fqn_matches(pattern, inst.fqn):
                continue
            chosen = _pick(inst.buffer, min_rank, since, lines)
            if chosen:
                picked.append(chosen)
        if not picked:
            return []
        merged = picked[0] if len(picked) == 1 else list(heapq.merge(*picked, key=_timestamp))
        if lines is not None and len(merged) > lines:
            merged = merged[-lines:]
        return merged

    def subscribe(
        self,
        pattern: str | None = None,
        level: LogLevel | str | None = None,
        tail: int = 0,
        *,
        maxlen: int = 1024,
    ) -> LogSubscription:
        """Live lines matching ``pattern`` at ``level`` or above; the last ``tail``
        buffered ones first. Holds at most max(maxlen, tail) unread lines."""
        sub = LogSubscription(self, pattern, _min_rank(level), max(maxlen, tail))
        self._restore_named(pattern)
        if tail > 0:
            for line in self.query(pattern, lines=tail, level=level):
                sub.offer(line)
        self._subscriptions.add(sub)
        self._subs_version += 1
        return sub

    def stats(self) -> dict[str, int]:
        return {
            "instances": len(self._instances),
            "followed_files": len(self._followed),
            "lines": self._lines,
            "bytes_read": self._bytes_read,
            "skipped_bytes": self._skipped_bytes,
            "write_errors": self._write_stats.errors,
            "dropped_file_bytes": self._write_stats.dropped_bytes,
            "subscriptions": len(self._subscriptions),
        }

    @property
    def write_errors(self) -> int:
        return self._write_stats.errors

    # -- internals ------------------------------------------------------------------

    def _restore_named(self, pattern: str | None) -> None:
        """Load log files of instances named without wildcards ("proj:web", "web",
        "proj:web#2") that this hub has not seen: a stopped service right after a
        daemon restart still shows its last lines."""
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
            directory = self.logs_dir / _safe_name(src)
            if hash_:
                candidates = [f"{_safe_name(service)}.log"]
            else:
                stem = _safe_name(base)
                try:
                    candidates = [
                        name
                        for name in os.listdir(directory)
                        if name == f"{stem}.log" or (name.startswith(f"{stem}#") and name.endswith(".log"))
                    ]
                except OSError:
                    continue
            for name in candidates:
                fqn = f"{src}:{unquote(name[: -len('.log')])}"
                if fqn in self._instances or fqn in self._forgotten:
                    continue
                if fqn.partition("#")[0] in self._forgotten:
                    continue
                if (directory / name).is_file():
                    self._instance(fqn)

    def _instance(self, fqn: str) -> _Instance:
        inst = self._instances.get(fqn)
        if inst is None:
            settings = self.settings
            file = LogFile(
                self.log_path(fqn), settings.max_file_bytes, settings.keep_files, self._write_stats
            )
            inst = self._instances[fqn] = _Instance(fqn, file)
            self._preload(inst)
        return inst

    def _preload(self, inst: _Instance) -> None:
        """Continuity across daemon restarts: the last lines of the log file(s)."""
        count = min(self._buffer_lines, PRELOAD_LINES)
        if count <= 0:
            return
        limit = min(count * (self._max_line + 80), 32 * 1024 * 1024)
        path = inst.file.path
        raws = read_tail_lines(path, count, limit)
        # Just rotated, or small files: the rest is in .1, .2, ...
        for index in range(1, max(0, self.settings.keep_files) + 1):
            if len(raws) >= count:
                break
            older = path.with_name(f"{path.name}.{index}")
            if not older.exists():
                break
            raws = read_tail_lines(older, count - len(raws), limit) + raws
        last_ts: datetime | None = None
        for raw in raws:
            parsed = parse_file_line(raw)
            if parsed is None:
                if last_ts is None:
                    continue  # can't place it in time
                ts, stream, level, rest = last_ts, "stdout", None, raw
            else:
                ts, stream, level, rest = parsed
            text = rest.decode("utf-8", "replace")
            guessed, message, fields = parse_line(text) if text[:1] == "{" else (None, text, None)
            self._store(
                inst,
                LogLine(
                    timestamp=ts,
                    level=level or guessed or LogLevel.INFO.value,
                    service_fqn=inst.fqn,
                    message=message,
                    fields=fields,
                    stream=stream,
                ),
            )
            last_ts = ts

    def _store(self, inst: _Instance, line: LogLine) -> None:
        inst.buffer.append(line)
        cost = len(line.message) + LINE_COST
        inst.buffer_bytes += cost
        self._buffered += cost
        self._buffered -= _trim(inst, self._buffer_lines, self._buffer_bytes)
        if self._buffered > self._buffer_total:
            self._rebalance(inst)

    def _rebalance(self, inst: _Instance) -> None:
        """Over the daemon-wide budget: the instance adding lines gives up its oldest
        ones down to an equal share; one under its share makes the largest buffer do so
        (quiet services keep what they have while there is room)."""
        share = self._buffer_total // max(1, len(self._instances))
        if inst.buffer_bytes > share:
            self._buffered -= _trim(inst, self._buffer_lines, share)
            if self._buffered <= self._buffer_total:
                return
        # Still over: every buffer over 9/10 of its share is cut to that, in one pass, so
        # the next pass is a tenth of the budget away rather than a line.
        target = share * 9 // 10
        for other in self._instances.values():
            if other.buffer_bytes > target:
                self._buffered -= _trim(other, self._buffer_lines, target)

    def _subscriptions_for(self, inst: _Instance) -> list[LogSubscription]:
        if inst.subs_version != self._subs_version:
            inst.subs = [sub for sub in self._subscriptions if sub.matches(inst.fqn)]
            inst.subs_version = self._subs_version
        return inst.subs

    def _remove_subscription(self, sub: LogSubscription) -> None:
        self._subscriptions.discard(sub)
        self._subs_version += 1

    def _note(self, inst: _Instance, message: str, level: str) -> None:
        batch = _Batch(self, inst, "hive")
        for text in message.splitlines() or [""]:
            batch.emit(text.encode("utf-8", "replace"), level)
        # Written on the pump's next turn: the notes of a burst of starts or stops go out
        # together, not as a write each. (Queries and streams have the line already.)
        if self._wake is None or self._closed:
            inst.file.flush()
            return
        self._unflushed[inst.file] = None
        self._wake.set()

    def _flush_notes(self) -> None:
        files, self._unflushed = self._unflushed, {}
        for file in files:
            file.flush()

    def _open_capture(
        self,
        inst: _Instance,
        stream: str,
        path: Path,
        offset: int,
        known: tuple[tuple[int, int], int] | None,
    ) -> _Capture:
        """A followed capture file, opened only once there is something to read.

        Where to start is decided from the file's identity and size now; the file itself
        is opened when output arrives (an inotify event on its directory) or at drain(): a
        quiet service costs no descriptor and no open per start.
        """
        # The watch before the size: a write after the stat then queues an event, which
        # drain() relies on to tell a written capture from an untouched one.
        try:
            wd = self._watch_directory(path.parent)
        except OSError as exc:
            # No live updates (watch limit reached?); drain() still reads it all.
            logger.error("cannot watch %s: %s", path.parent, exc.strerror or exc)
            wd = -1
        try:
            info = os.stat(path)
        except FileNotFoundError:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            info = os.stat(path)
        cap = _Capture(inst, stream, path, -1)
        cap.pending = True
        cap.block = info.st_blksize or 4096
        cap.identity = (info.st_dev, info.st_ino)
        pos = max(0, offset)
        if known is not None and known[0] == cap.identity and pos < known[1] <= info.st_size:
            pos = known[1]  # this hub already turned those bytes into lines
        if pos > info.st_size:
            pos = 0  # the file was replaced or truncated since the offset was saved
        cap.pos = pos
        cap.punched = 0
        if wd >= 0:
            cap.wd = wd
            self._by_wd[wd][os.fsencode(path.name)] = cap
        self._followed[cap] = None
        if pos < info.st_size:
            self._dirty[cap] = None  # what is already there
        return cap

    def _activate(self, cap: _Capture) -> bool:
        """Open a pending capture file; False if it cannot be (it is then dropped)."""
        cap.pending = False
        can_punch = True
        try:
            try:
                # Read-write only for fallocate; the hub never writes to capture files.
                fd = os.open(cap.path, os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:
                fd = os.open(cap.path, os.O_RDONLY | os.O_CLOEXEC)
                can_punch = False
        except OSError as exc:
            logger.error("cannot read %s: %s", cap.path, exc.strerror or exc)
            return False
        cap.can_punch = can_punch
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != cap.identity:
            # Replaced since it was followed: the new file is read from its start.
            cap.identity = (info.st_dev, info.st_ino)
            cap.pos = 0
        if cap.pos < info.st_size:
            # Bytes a predecessor freed read back as zeros: start at real data.
            try:
                data_at = os.lseek(fd, cap.pos, os.SEEK_DATA)
            except OSError:
                data_at = info.st_size  # only holes after pos
            if data_at > cap.pos:
                cap.pos = data_at
                cap.resync = data_at < info.st_size
        cap.fd = fd
        return True

    def _unfollow(self, inst: _Instance) -> None:
        if inst.captures is None:
            return
        out, err = inst.captures
        inst.saved_offsets = (out.consumed, err.consumed)
        inst.saved_identities = (out.identity, err.identity)
        inst.captures = None
        for cap in (out, err):
            self._note_skipped(cap, force=True)
            self._close_capture(cap)

    def _watch_directory(self, directory: Path) -> int:
        wd = self._dir_watches.get(directory)
        if wd is None:
            wd = self._get_inotify().add_watch(directory, IN_MODIFY)
            self._dir_watches[directory] = wd
            self._by_wd.setdefault(wd, {})
        return wd

    def _close_capture(self, cap: _Capture) -> None:
        self._dirty.pop(cap, None)
        self._followed.pop(cap, None)
        if cap.wd >= 0:
            # The directory's watch stays: its other services, and this one's next run.
            files = self._by_wd.get(cap.wd)
            if files is not None and files.get(os.fsencode(cap.path.name)) is cap:
                del files[os.fsencode(cap.path.name)]
            cap.wd = -1
        if cap.fd >= 0:
            fd, cap.fd = cap.fd, -1
            os.close(fd)

    def _read_chunk(self, cap: _Capture, *, draining: bool = False) -> bool:
        """Read and process one chunk; True when more is known to be waiting."""
        try:
            size = os.fstat(cap.fd).st_size
            if size < cap.pos:
                self._reset(cap, "was truncated: reading it from the start")
            if size - cap.pos > self._max_backlog:
                self._skip(cap, size - self._max_backlog, note_now=draining)
            if cap.pos >= size:
                return False
            data = os.pread(cap.fd, self._chunk, cap.pos)
        except OSError as exc:
            logger.error("cannot read %s: %s", cap.path, exc.strerror or exc)
            return False
        if not data:
            return False
        cap.pos += len(data)
        self._bytes_read += len(data)
        self._consume(cap, data)
        cap.inst.file.flush()
        self._punch(cap, force=False)
        return cap.pos < size

    def _consume(self, cap: _Capture, data: bytes) -> None:
        if cap.resync:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            cap.resync = False
        if cap.partial:
            data = cap.partial + data
            cap.partial = b""
        parts = data.split(b"\n")
        tail = parts.pop()
        batch = _Batch(self, cap.inst, cap.stream)
        limit = self._max_line
        cont = cap.cont_level
        for raw in parts:
            if cont is not None:
                # The end of a cut line: it keeps the level of its first piece.
                if raw:
                    self._emit_long(batch, raw, cont)
                cont = None
            elif len(raw) > limit:
                self._emit_long(batch, raw, None)
            else:
                batch.emit(raw)
        while len(tail) > limit:
            piece, tail = _cut(tail, limit)
            cont = batch.emit(piece, cont)
        cap.partial = tail
        cap.cont_level = cont

    def _emit_long(self, batch: _Batch, raw: bytes, level: str | None) -> None:
        limit = self._max_line
        while len(raw) > limit:
            piece, raw = _cut(raw, limit)
            level = batch.emit(piece, level)
        if raw:
            batch.emit(raw, level)

    def _finish_line(self, cap: _Capture) -> None:
        if cap.partial:
            batch = _Batch(self, cap.inst, cap.stream)
            batch.emit(cap.partial, cap.cont_level)
            cap.inst.file.flush()
        cap.partial = b""
        cap.cont_level = None

    def _reset(self, cap: _Capture, why: str) -> None:
        self._note(cap.inst, f"{cap.stream} capture file {why}", _WARN)
        cap.pos = 0
        cap.partial = b""
        cap.cont_level = None
        cap.resync = False
        cap.punched = 0

    def _skip(self, cap: _Capture, to: int, *, note_now: bool) -> None:
        skipped = to - cap.consumed
        cap.pos = to
        cap.partial = b""
        cap.cont_level = None
        cap.resync = True
        self._skipped_bytes += skipped
        cap.skip_pending += skipped
        self._note_skipped(cap, force=note_now)

    def _note_skipped(self, cap: _Capture, *, force: bool) -> None:
        if not cap.skip_pending:
            return
        now = time.monotonic()
        if not force and now - cap.skip_noted_at < _SKIP_NOTE_INTERVAL:
            return
        skipped, cap.skip_pending = cap.skip_pending, 0
        cap.skip_noted_at = now
        self._note(
            cap.inst,
            f"skipped {skipped} bytes of {cap.stream}: the service writes faster than "
            "its logs can be processed",
            _WARN,
        )

    def _punch(self, cap: _Capture, *, force: bool) -> None:
        """Give consumed capture bytes back to the filesystem."""
        if not cap.can_punch or cap.fd < 0:
            return
        consumed = cap.consumed
        target = consumed - consumed % cap.block
        if target - cap.punched < (1 if force else _PUNCH_STEP):
            return
        try:
            supported = punch_hole(cap.fd, cap.punched, target - cap.punched)
        except OSError as exc:
            logger.warning("cannot free consumed bytes of %s: %s", cap.path, exc.strerror or exc)
            supported = False
        if supported:
            cap.punched = target
        else:
            cap.can_punch = False


def _trim(inst: _Instance, max_lines: int, max_bytes: int) -> int:
    """Drop the oldest lines over the caps; what that freed (estimated)."""
    buffer = inst.buffer
    before = inst.buffer_bytes
    while buffer and (len(buffer) > max_lines or inst.buffer_bytes > max_bytes):
        inst.buffer_bytes -= len(buffer.popleft().message) + LINE_COST
    return before - inst.buffer_bytes


def _cut(raw: bytes, limit: int) -> tuple[bytes, bytes]:
    """Split at ``limit`` bytes, backing off so a UTF-8 character stays whole."""
    cut = limit
    while cut > limit - 3 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    if raw[cut] & 0xC0 == 0x80:
        cut = limit  # not UTF-8 anyway
    return raw[:cut], raw[cut:]


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
        if _RANK[line.level] < min_rank or (since is not None and line.timestamp < since):
            continue
        chosen.append(line)
        if lines is not None and len(chosen) >= lines:
            break
    chosen.reverse()
    return chosen
