"""Tailing the capture files: inotify tells which grew, the pump reads them in chunks.

Each service instance writes stdout and stderr into two capture files it holds open
with O_APPEND; the daemon never sits on a pipe, so its own crash or restart cannot
block or kill a service. ``CaptureTailer`` follows those files:

- **Watching.** One inotify descriptor, one watch per capture *directory* (not per
  file): a start costs no syscall for it. An event naming a followed file marks it
  dirty; the pump reads dirty files round robin, ``chunk`` bytes at a time, yielding
  to the loop between chunks so a flood cannot starve the rest of the daemon.
- **Lazy opening.** A followed file is opened only once output arrives (or at
  ``drain``): a quiet service costs no descriptor and no open per start.
- **Offsets.** ``Capture.consumed`` is how far bytes became lines; the daemon saves it
  and passes it back to ``follow`` after a restart of its own, so nothing is read
  twice. A file replaced or truncated since is read from its start.
- **Backlog.** Unread data past ``max_backlog`` is skipped (it would be rotated out of
  the log files before anyone read it), and a note says so, at most once a second.
- **Lines.** Bytes are split into lines of at most ``max_line`` bytes (longer ones are
  cut, at a UTF-8 character boundary; the pieces keep the first one's level) and handed
  to ``_route`` in batches.
- **Freeing.** Consumed bytes are punched out of the capture files (``fallocate``), so
  a chatty service's capture file does not fill the disk.
- **Drain.** After a child exits, ``drain`` reads what is left, the unfinished last
  line included, before the capture is unfollowed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from hive_client import LogLevel

from ._files import LogFile
from ._route import Batch, Instance, LineRouter
from ._sys import IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, Inotify, punch_hole

__all__ = ["CHUNK_BYTES", "Capture", "CaptureTailer"]

logger = logging.getLogger("hive.logs")

# One read; the pump yields to the loop between chunks so a flood can't starve others.
CHUNK_BYTES = 256 * 1024
# Free consumed capture bytes in steps of this much (each punch is a syscall).
_PUNCH_STEP = 1024 * 1024
# Unread output a memory capture may hold before older bytes are skipped: it is RAM.
MEMORY_BACKLOG = 16 * 1024 * 1024
# One "skipped N bytes" note per capture file per this many seconds, at most.
_SKIP_NOTE_INTERVAL = 1.0
_WARN = LogLevel.WARN.value

# A note for the instance (its text, its level): the daemon's own line, stream "hive".
NoteFn = Callable[[Instance, str, str], None]


class Capture:
    """One followed capture file (an instance's stdout or stderr)."""

    __slots__ = (
        "block",
        "can_punch",
        "cont_level",
        "fd",
        "identity",
        "inst",
        "memory",
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

    def __init__(self, inst: Instance, stream: str, path: Path, fd: int) -> None:
        self.inst = inst
        self.stream = stream
        self.path = path
        self.fd = fd
        self.pending = False  # followed, not opened yet (see CaptureTailer._open_capture)
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
        self.memory = False  # a memfd the daemon holds (see runners._capture), not a file

    @property
    def consumed(self) -> int:
        """Bytes turned into lines: where a successor resumes without duplicates."""
        return self.pos if self.resync else self.pos - len(self.partial)


class CaptureTailer:
    """Follows capture files and turns what they gain into lines (see the module)."""

    def __init__(self, router: LineRouter, note: NoteFn, chunk: int) -> None:
        self._router = router
        self._note = note
        self.chunk = max(4096, chunk)
        self.max_line = 16  # set by configure()
        self.max_backlog = 0  # set by configure()
        self._inotify: Inotify | None = None
        self._dir_watches: dict[Path, int] = {}
        self._by_wd: dict[int, dict[bytes, Capture]] = {}
        self._followed: dict[Capture, None] = {}
        self._dirty: dict[Capture, None] = {}  # insertion-ordered set: round robin
        self._wake: anyio.Event | None = None
        self.closed = False
        self._unflushed: dict[LogFile, None] = {}
        self.bytes_read = 0
        self.skipped_bytes = 0

    def configure(self, max_line: int, max_backlog: int) -> None:
        self.max_line = max(16, max_line)
        self.max_backlog = max_backlog

    @property
    def followed_files(self) -> int:
        return len(self._followed)

    # -- life cycle -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch and read followed files until cancelled (the caller then closes)."""
        inotify = self._get_inotify()
        self._wake = anyio.Event()
        if self._dirty:
            self._wake.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, inotify)
            task_status.started()
            await self._pump()

    def close(self) -> None:
        """Stop following anything (unfollow every instance first)."""
        self.closed = True
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._by_wd.clear()
        self._dir_watches.clear()

    def flush_later(self, file: LogFile) -> None:
        """Write the file's queued lines on the pump's next turn: the notes of a burst of
        starts or stops go out together, not as a write each. At once if not running."""
        if self._wake is None or self.closed:
            file.flush()
            return
        self._unflushed[file] = None
        self._wake.set()

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

    def _flush_notes(self) -> None:
        files, self._unflushed = self._unflushed, {}
        for file in files:
            file.flush()

    # -- following ------------------------------------------------------------------

    def follow(self, inst: Instance, paths: tuple[Path, Path], start: tuple[int, int]) -> None:
        """Follow the instance's (stdout, stderr) capture files from ``start`` (bytes),
        or from past what was consumed of the same files before (see LogHub.follow)."""
        known = inst.saved_identities
        out = self._open_capture(
            inst, "stdout", paths[0], start[0], known and (known[0], inst.saved_offsets[0])
        )
        try:
            err = self._open_capture(
                inst, "stderr", paths[1], start[1], known and (known[1], inst.saved_offsets[1])
            )
        except BaseException:
            self._close_capture(out)
            raise
        inst.captures = (out, err)
        if self._wake is not None:
            self._wake.set()

    def follow_memory(self, inst: Instance, owner: object, fds: tuple[int, int], start: tuple[int, int]) -> None:
        """Follow the memory captures (stdout, stderr) of the run ``owner``, taking over
        ``fds`` (-1: that stream is not captured); from ``start`` bytes, when given
        (the offsets a killed daemon saved for the same files)."""
        old = inst.memory.pop(owner, None)
        if old is not None:
            for cap in old:
                self._close_capture(cap)
        pair = (self._open_memory(inst, "stdout", fds[0], start[0]),
                self._open_memory(inst, "stderr", fds[1], start[1]))
        inst.memory[owner] = pair
        if self._wake is not None:
            self._wake.set()

    def _open_memory(self, inst: Instance, stream: str, fd: int, offset: int) -> Capture:
        cap = Capture(inst, stream, Path(f"<{stream} of {inst.fqn}>"), fd)
        cap.memory = True
        if fd < 0:
            return cap  # not captured: nothing to read, ever
        info = os.fstat(fd)
        cap.identity = (info.st_dev, info.st_ino)
        cap.block = info.st_blksize or 4096
        pos = max(0, offset)
        if pos > info.st_size:
            pos = 0  # offsets of other files
        if pos < info.st_size:
            # Punched (consumed) bytes read back as zeros: start at real data.
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data_at = info.st_size
            if data_at > pos:
                pos = data_at
                cap.resync = data_at < info.st_size
            self._dirty[cap] = None  # written while no daemon read it
        cap.pos = cap.punched = pos
        try:
            wd = self._get_inotify().add_watch(f"/proc/self/fd/{fd}", IN_MODIFY)
        except OSError as exc:
            # No live updates (watch limit reached?); drain() still reads it all.
            logger.error("cannot watch the %s of %s: %s", stream, inst.fqn, exc.strerror or exc)
        else:
            cap.wd = wd
            self._by_wd[wd] = {b"": cap}
        self._followed[cap] = None
        return cap

    def unfollow(self, inst: Instance, owner: object = None) -> None:
        """Stop following the instance's captures: all of them, or only the memory
        captures of the run ``owner``."""
        pairs = [inst.memory.pop(owner)] if owner is not None and owner in inst.memory else []
        if owner is None:
            pairs = list(inst.memory.values())
            inst.memory.clear()
            if inst.captures is not None:
                out, err = inst.captures
                inst.saved_offsets = (out.consumed, err.consumed)
                inst.saved_identities = (out.identity, err.identity)
                inst.captures = None
                pairs.append((out, err))
        for pair in pairs:
            for cap in pair:
                self._note_skipped(cap, force=True)
                self._close_capture(cap)

    @staticmethod
    def offsets(inst: Instance, owner: object = None) -> tuple[int, int]:
        pair = inst.memory.get(owner) if owner is not None else None
        if pair is None and inst.memory and inst.captures is None:
            pair = next(reversed(inst.memory.values()))  # the newest run's
        if pair is not None:
            return (pair[0].consumed, pair[1].consumed)
        if inst.captures is None:
            return inst.saved_offsets
        return (inst.captures[0].consumed, inst.captures[1].consumed)

    async def drain(self, inst: Instance) -> None:
        """Read what is in the instance's capture files now; an unfinished last line
        counts too. A cancel does not cut it short."""
        caps = [cap for pair in inst.memory.values() for cap in pair]
        if inst.captures is not None:
            caps += inst.captures
        if not caps:
            return
        inotify = self._inotify
        if inotify is not None and any(cap.pending and cap.wd >= 0 for cap in caps):
            # A write queues its event before write() returns, so once the writer has
            # exited the queue names every capture written to: a pending one it does
            # not name is untouched (one read for both, rather than a stat of each).
            self._take_events(inotify)
        for cap in caps:
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

    def _open_capture(
        self,
        inst: Instance,
        stream: str,
        path: Path,
        offset: int,
        known: tuple[tuple[int, int], int] | None,
    ) -> Capture:
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
        cap = Capture(inst, stream, path, -1)
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

    def _activate(self, cap: Capture) -> bool:
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

    def _watch_directory(self, directory: Path) -> int:
        wd = self._dir_watches.get(directory)
        if wd is None:
            wd = self._get_inotify().add_watch(directory, IN_MODIFY)
            self._dir_watches[directory] = wd
            self._by_wd.setdefault(wd, {})
        return wd

    def _close_capture(self, cap: Capture) -> None:
        self._dirty.pop(cap, None)
        self._followed.pop(cap, None)
        if cap.wd >= 0 and cap.memory:
            # A watch of its own: removed with it (it keeps the memfd alive otherwise).
            self._by_wd.pop(cap.wd, None)
            if self._inotify is not None:
                try:
                    self._inotify.rm_watch(cap.wd)
                except OSError as exc:
                    logger.warning("cannot remove the watch of %s: %s", cap.path, exc.strerror or exc)
            cap.wd = -1
        if cap.wd >= 0:
            # The directory's watch stays: its other services, and this one's next run.
            files = self._by_wd.get(cap.wd)
            if files is not None and files.get(os.fsencode(cap.path.name)) is cap:
                del files[os.fsencode(cap.path.name)]
            cap.wd = -1
        if cap.fd >= 0:
            fd, cap.fd = cap.fd, -1
            os.close(fd)

    # -- reading --------------------------------------------------------------------

    def _read_chunk(self, cap: Capture, *, draining: bool = False) -> bool:
        """Read and process one chunk; True when more is known to be waiting."""
        try:
            size = os.fstat(cap.fd).st_size
            if size < cap.pos:
                self._reset(cap, "was truncated: reading it from the start")
            backlog = min(self.max_backlog, MEMORY_BACKLOG) if cap.memory else self.max_backlog
            if size - cap.pos > backlog:
                self._skip(cap, size - backlog, note_now=draining)
            if cap.pos >= size:
                return False
            data = os.pread(cap.fd, self.chunk, cap.pos)
        except OSError as exc:
            logger.error("cannot read %s: %s", cap.path, exc.strerror or exc)
            return False
        if not data:
            return False
        cap.pos += len(data)
        self.bytes_read += len(data)
        self._consume(cap, data)
        cap.inst.file.flush()
        self._punch(cap, force=False)
        return cap.pos < size

    def _consume(self, cap: Capture, data: bytes) -> None:
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
        batch = self._router.batch(cap.inst, cap.stream)
        limit = self.max_line
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

    def _emit_long(self, batch: Batch, raw: bytes, level: str | None) -> None:
        limit = self.max_line
        while len(raw) > limit:
            piece, raw = _cut(raw, limit)
            level = batch.emit(piece, level)
        if raw:
            batch.emit(raw, level)

    def _finish_line(self, cap: Capture) -> None:
        if cap.partial:
            batch = self._router.batch(cap.inst, cap.stream)
            batch.emit(cap.partial, cap.cont_level)
            cap.inst.file.flush()
        cap.partial = b""
        cap.cont_level = None

    def _reset(self, cap: Capture, why: str) -> None:
        self._note(cap.inst, f"{cap.stream} capture file {why}", _WARN)
        cap.pos = 0
        cap.partial = b""
        cap.cont_level = None
        cap.resync = False
        cap.punched = 0

    def _skip(self, cap: Capture, to: int, *, note_now: bool) -> None:
        skipped = to - cap.consumed
        cap.pos = to
        cap.partial = b""
        cap.cont_level = None
        cap.resync = True
        self.skipped_bytes += skipped
        cap.skip_pending += skipped
        self._note_skipped(cap, force=note_now)

    def _note_skipped(self, cap: Capture, *, force: bool) -> None:
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

    def _punch(self, cap: Capture, *, force: bool) -> None:
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



def _cut(raw: bytes, limit: int) -> tuple[bytes, bytes]:
    """Split at ``limit`` bytes, backing off so a UTF-8 character stays whole."""
    cut = limit
    while cut > limit - 3 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    if raw[cut] & 0xC0 == 0x80:
        cut = limit  # not UTF-8 anyway
    return raw[:cut], raw[cut:]
