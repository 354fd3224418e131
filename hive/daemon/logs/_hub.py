"""LogHub: the one object the daemon talks to (``app.logs``); it composes the parts.

::

    _tail     CaptureTailer   capture files --inotify, chunks--> raw lines
    _route    Batch.emit      raw line --> LogLine --> ring, subscribers, log file
    _buffer   Buffers         per-instance rings under per-instance and total budgets
    _fanout   Fanout          live subscriptions (drop-oldest queues) by FQN pattern
    _files    FileLayout,     where files are; log files written, rotated, pruned,
              LogFile         and read back when an instance is first seen

The hub keeps the registry of instances (``Instance``, shared by the parts), applies
``[logs]`` settings to every part, and owns the life cycle: ``run`` until cancelled,
then every file is closed and every stream ended. Everything else is delegation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from hive_client import LogLevel, LogLine

from ..settings import LogsSection
from ._buffer import DEFAULT_BUFFER_BYTES, RANK, Buffers
from ._fanout import Account, Fanout, LogSubscription
from ._files import FileLayout, LogFile, WriteStats, read_recent_lines
from ._parse import parse_file_lines
from ._retention import DiskGuard
from ._route import Instance, LineRouter
from ._tail import CHUNK_BYTES, CaptureTailer

__all__ = ["PRELOAD_LINES", "LogHub"]

# At most this many lines come back from the log file when an instance is first seen.
PRELOAD_LINES = 1000


_WARN = LogLevel.WARN.value


def _level_value(level: LogLevel | str) -> str:
    return level.value if isinstance(level, LogLevel) else LogLevel.parse(level).value


def _min_rank(level: LogLevel | str | None) -> int:
    return 0 if level is None else RANK[_level_value(level)]


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
        self._layout = FileLayout(self.logs_dir, self.run_dir)
        self._buffers = Buffers(buffer_bytes)
        self._fanout = Fanout()
        self._router = LineRouter(self._buffers, self._fanout)
        self._tailer = CaptureTailer(self._router, self._note, chunk_bytes)
        self._backlog_option = max_backlog_bytes
        self._instances: dict[str, Instance] = {}
        self._forgotten: set[str] = set()  # forget()-ten: not brought back from files
        self._write_stats = WriteStats()
        self._write_stats.on_episode = self._episode
        self._write_stats.pressure = self._pressure
        self._guard = DiskGuard(settings.keep_free_bytes)
        self._retrying = False  # in _retry_failing: its own recoveries do not loop again
        self._apply(settings)

    def _apply(self, settings: LogsSection) -> None:
        self.settings = settings
        self._guard.keep_free = settings.keep_free_bytes
        self._buffers.configure(settings.buffer_lines, settings.buffer_total_bytes)
        max_line = max(16, settings.max_line_bytes)
        # Past this much unread data, older bytes are skipped: they would be rotated
        # out of the log files before anyone could read them anyway.
        retained = (max(0, settings.keep_files) + 1) * max(1, settings.max_file_bytes)
        max_backlog = max(
            self._backlog_option if self._backlog_option is not None else retained,
            4 * self._tailer.chunk,
            2 * max_line,
        )
        self._tailer.configure(max_line, max_backlog)

    def reconfigure(self, settings: LogsSection) -> None:
        """Apply new ``[logs]`` settings (a daemon reload) to everything running."""
        for inst in self._instances.values():
            inst.file.reconfigure(settings.max_file_bytes, settings.keep_files)
        self._apply(settings)  # the buffers trim to the new caps

    # -- life cycle -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch followed files until cancelled; then close files and end streams."""
        try:
            await self._tailer.run(task_status=task_status)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._tailer.closed = True  # notes from here on are written at once
        for inst in self._instances.values():
            self._tailer.unfollow(inst)
            inst.file.close()
        self._fanout.close_all()
        self._tailer.close()

    # -- paths ----------------------------------------------------------------------

    def capture_paths(self, fqn: str) -> tuple[Path, Path]:
        """Where the instance's stdout and stderr go (the directory exists)."""
        return self._layout.capture_paths(fqn)

    async def prepare(self, fqns: Iterable[str]) -> None:
        """Create the capture and log files of these instances before they start.

        Creating a file costs a new inode, which on some file systems takes longer than
        starting the process; done here, in a worker thread and for a whole source at
        once, it is off the path of `start`. (A start without it creates them itself.)
        """
        await self._layout.prepare(fqns)

    def log_path(self, fqn: str) -> Path:
        return self._layout.log_path(fqn)

    # -- following ------------------------------------------------------------------

    def follow(
        self,
        fqn: str,
        offsets: tuple[int, int] | None = None,
        *,
        output: tuple[int, int] | None = None,
        owner: object = None,
    ) -> None:
        """Follow the instance's capture files from ``offsets`` (bytes).

        With ``output``, the capture files are the memory captures of one run (``owner``,
        its handle) whose (stdout, stderr) descriptors the hub takes over and closes;
        ``offsets`` then apply to them alone. Several runs of one instance (a rollout's
        generations) are followed side by side.

        Without offsets, continue where this hub last stopped for the instance
        (0, 0 for one it has not seen). Bytes this hub already consumed from the
        same files are never read twice, whatever ``offsets`` says: following again
        after a restart of the service continues after the previous run's output
        (capture files are appended to); a replaced or truncated file is read from
        its start. Missing files are created. Following a followed instance does
        nothing.
        """
        if self._tailer.closed:
            for fd in output or ():
                if fd >= 0:
                    os.close(fd)
            return  # the hub has stopped (daemon shutdown): nothing would read them
        inst = self._instance(fqn)
        self._forgotten.discard(fqn)
        if output is not None:
            self._tailer.follow_memory(inst, owner, output, offsets or (0, 0))
            return
        if inst.captures is not None:
            return
        # Without offsets, start at 0: the tailer moves that past what this hub
        # consumed, as long as the files are the same ones.
        start = offsets if offsets is not None else (0, 0)
        self._tailer.follow(inst, self.capture_paths(fqn), start)

    def unfollow(self, fqn: str, owner: object = None) -> None:
        """Stop watching (call drain first): everything of the instance, or the memory
        captures of the run ``owner`` only. The buffer and offsets stay."""
        inst = self._instances.get(fqn)
        if inst is not None:
            self._tailer.unfollow(inst, owner)

    def offsets(self, fqn: str, owner: object = None) -> tuple[int, int]:
        """Bytes of (stdout, stderr) turned into lines (of the run ``owner``, when it has
        memory captures); persist these to resume."""
        inst = self._instances.get(fqn)
        if inst is None:
            return (0, 0)
        return self._tailer.offsets(inst, owner)

    async def drain(self, fqn: str) -> None:
        """Read what is in the capture files now; an unfinished last line counts too.
        A cancel does not cut it short."""
        inst = self._instances.get(fqn)
        if inst is not None:
            await self._tailer.drain(inst)

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
            self._tailer.unfollow(inst)  # may note skipped bytes into it: counted before it goes
            self._buffers.remove(key)
            self._fanout.forget(key)
            inst.file.close()
            self._forgotten.add(key)

    def captured(self, fqn: str, stream: str, text: str) -> None:
        """A line the daemon captured itself for an instance or a source (hook and build
        output): ``stream`` names its origin (``hook``, ``build``), the level is guessed
        from the text as for service output."""
        if self._tailer.closed:
            return
        self._forgotten.discard(fqn)
        inst = self._instance(fqn)
        self._router.batch(inst, stream).emit(text.encode("utf-8", "replace"))
        self._tailer.flush_later(inst.file)

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
        return self._buffers.query(pattern, lines, since, min_rank)

    def subscribe(
        self,
        pattern: str | None = None,
        level: LogLevel | str | None = None,
        tail: int = 0,
        *,
        maxlen: int = 1024,
        max_bytes: int = 1 << 62,
        account: Account | None = None,
    ) -> LogSubscription:
        """Live lines matching ``pattern`` at ``level`` or above; the last ``tail``
        buffered ones first (``tail`` is capped at ``logs.buffer_lines``: there are no
        more). Holds at most max(maxlen, tail) unread lines and ``max_bytes`` of them,
        charged to ``account``."""
        tail = min(tail, self._buffers.max_lines)
        sub = self._fanout.subscription(pattern, _min_rank(level), max(maxlen, tail), max_bytes, account)
        self._restore_named(pattern)
        if tail > 0:
            sub.prefill(self.query(pattern, lines=tail, level=level))
        self._fanout.add(sub)
        return sub

    def stats(self) -> dict[str, int]:
        return {
            "instances": len(self._instances),
            "followed_files": self._tailer.followed_files,
            "lines": self._router.lines,
            "bytes_read": self._tailer.bytes_read,
            "skipped_bytes": self._tailer.skipped_bytes,
            "write_errors": self._write_stats.errors,
            "dropped_file_bytes": self._write_stats.dropped_bytes,
            "dropped_file_lines": self._write_stats.dropped_lines,
            "removed_old_files": self._guard.removed_files,
            "subscriptions": len(self._fanout),
        }

    @property
    def subscriptions(self) -> int:
        return len(self._fanout)

    @property
    def write_errors(self) -> int:
        return self._write_stats.errors

    @property
    def dropped_lines(self) -> int:
        """Lines that could not be written to their log file (kept in memory only)."""
        return self._write_stats.dropped_lines

    @property
    def write_error(self) -> str | None:
        """Why log files cannot be written now (None while they can)."""
        return self._write_stats.last_error

    # -- internals ------------------------------------------------------------------

    def _restore_named(self, pattern: str | None) -> None:
        """Load log files of instances named without wildcards ("proj:web", "web",
        "proj:web#2") that this hub has not seen: a stopped service right after a
        daemon restart still shows its last lines."""
        for fqn, path in self._layout.log_files_named(pattern):
            if fqn in self._instances or fqn in self._forgotten:
                continue
            if fqn.partition("#")[0] in self._forgotten:
                continue
            if path.is_file():
                self._instance(fqn)

    def _instance(self, fqn: str) -> Instance:
        inst = self._instances.get(fqn)
        if inst is None:
            settings = self.settings
            file = LogFile(
                self.log_path(fqn), settings.max_file_bytes, settings.keep_files, self._write_stats, fqn
            )
            inst = self._instances[fqn] = Instance(fqn, self._buffers.add(fqn), file)
            self._preload(inst)
        return inst

    def _preload(self, inst: Instance) -> None:
        """Continuity across daemon restarts: the last lines of the log file(s)."""
        count = min(self._buffers.max_lines, PRELOAD_LINES)
        if count <= 0:
            return
        limit = min(count * (self._tailer.max_line + 80), 32 * 1024 * 1024)
        raws = read_recent_lines(inst.file.path, self.settings.keep_files, count, limit)
        for line in parse_file_lines(raws, inst.fqn):
            self._buffers.store(inst.ring, line)

    def _episode(self, file: LogFile, began: bool) -> None:
        """A log file's writes started failing, or work again: the instance's log says
        so (in memory while failing; in the file too once it works)."""
        inst = self._instances.get(file.fqn)
        if inst is None or inst.file is not file:
            return
        if began:
            self._note(inst, f"cannot write the log file {file.path}: {file.error}; lines are kept in "
                       "memory only (hive logs) and counted until it can be written", _WARN)
            return
        since = datetime.fromtimestamp(file.failing_since, UTC).strftime("%H:%M:%S")
        self._note(inst, f"the log file can be written again: {file.dropped_lines} lines since {since} "
                   f"UTC could not be stored ({file.error})", _WARN)
        if not self._retrying:
            self._retry_failing(file)

    def _retry_failing(self, written: LogFile) -> None:
        """``written`` took a write after failing: there is room on its file system, so
        the other files there that failed end their episode now too (their first line is
        the note of what they lost), not at their service's next output, which may be
        far off (a crashed service in backoff), keeping `hive status` at NOT STORED."""
        try:
            device = os.stat(written.path.parent).st_dev
        except OSError:
            return
        self._retrying = True
        try:
            for inst in list(self._instances.values()):
                file = inst.file
                if file is written or not file.failing:
                    continue
                with contextlib.suppress(OSError):
                    if os.stat(file.path.parent).st_dev == device:
                        file.recovered()
        finally:
            self._retrying = False

    def _pressure(self, directory: Path, failing: bool) -> None:
        """Space may be short where ``directory`` is: old log files go first."""
        reclaimed = self._guard.reclaim(directory, [inst.file for inst in self._instances.values()],
                                        self.settings.keep_files, failing=failing)
        if reclaimed is None or not reclaimed.removed:
            return
        free_mib, mark_mib = reclaimed.free / 1048576, reclaimed.target / 1048576
        for file, names in reclaimed.removed.items():
            inst = self._instances.get(file.fqn)
            if inst is not None:
                self._note(inst, f"removed old log files {', '.join(names)}: free space is low "
                           f"({free_mib:.1f} MiB free, logs.keep_free_bytes is {mark_mib:.1f} MiB)", _WARN)

    def _note(self, inst: Instance, message: str, level: str) -> None:
        batch = self._router.batch(inst, "hive")
        for text in message.splitlines() or [""]:
            batch.emit(text.encode("utf-8", "replace"), level)
        # Written on the pump's next turn (queries and streams have the line already).
        self._tailer.flush_later(inst.file)
