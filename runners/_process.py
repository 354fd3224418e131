"""Process plumbing for the script runner: spawn, identity, the process table, signals.

Identity. A pid alone is not a process: numbers are reused. A process is named here by
``(pid, ticks)``, ``ticks`` being its start time in clock ticks since boot (field 22 of
``/proc/<pid>/stat``: fixed for the life of the process, immune to clock changes), plus
the boot id when it is stored for a later daemon. Every signal to a process other than
our own unreaped child goes through a pidfd opened *then* checked against that identity,
so it can never hit a newcomer that took over the number.

Membership. Everything a service started carries ``HIVE_RUN_ID`` in its environment (the
runner adds it, one value per start). With that, a scan of ``/proc`` finds the service's
processes even when they left its process group and session and their parent died (a
daemon that double-forked with setsid): the descendants of the main process, the members
of its process group and session, and every process tree whose root carries the run id.
Only a process that both escaped the session and scrubbed its environment is out of reach.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from . import _spawn
from .base import RunnerError

__all__ = [
    "CLOCK_TICKS",
    "RUN_ID_VAR",
    "ProcInfo",
    "ProcessTable",
    "boot_id",
    "cached_table",
    "classify_spawn_error",
    "create_time",
    "created_since",
    "env_value",
    "forget_own_leader",
    "killpg",
    "last_pid",
    "new_processes",
    "note_own_leader",
    "open_output",
    "open_verified",
    "pidfd_exited",
    "process_table",
    "read_environ",
    "read_stat",
    "send",
    "spawn",
    "wait_pidfds",
]

RUN_ID_VAR = "HIVE_RUN_ID"
_RUN_ID_PREFIX = RUN_ID_VAR.encode() + b"="
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    ticks: int
    state: str  # R, S, D, Z, T, ...

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def read_stat(pid: int) -> ProcInfo | None:
    """The process's stat line, or None if there is no such process."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp session tty tpgid flags ... starttime(22) ..."; comm may
    # hold spaces and parentheses, so split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]),
                        fields[0].decode())
    except (IndexError, ValueError):
        return None


# How long an execve may keep a process's environment out of sight (see read_environ).
_EXEC_WAIT = 0.25
_PF_KTHREAD = 0x00200000


def read_environ(pid: int) -> bytes | None:
    """The environment block the process was started with, or None if it is not readable.

    An execve hides it for a moment: /proc/PID/environ reads empty while the new memory
    has no environment yet (stat's ``env_end`` is 0, then equal to ``env_start`` while
    the kernel lays it out), or through a descriptor opened on the memory the execve
    dropped. A process caught there would not show the marks that make it a member, and
    would escape a stop. So an empty read is believed for a process with no memory (a
    zombie, a kernel thread), or when stat shows the same empty environment twice a
    moment apart; else it is read again, for at most ``_EXEC_WAIT``.
    tests/runners/test_process_environ.py reads a process that execs in a loop."""
    deadline = None
    empty_seen = None
    while True:
        environ = _read_environ_once(pid)
        if environ != b"":
            return environ
        bounds = _environ_bounds(pid)
        if bounds is None:
            return None  # gone
        state, flags, env_start, env_end = bounds
        if state in ("Z", "X") or flags & _PF_KTHREAD:
            return environ
        if env_end and bounds == empty_seen:
            return environ  # an empty environment indeed (env -i)
        now = time.monotonic()
        if deadline is None:
            deadline = now + _EXEC_WAIT
        elif now >= deadline:
            return None
        if env_end and env_start != env_end:
            empty_seen = None  # the execve ended since the read: read the new memory now
        else:
            empty_seen = bounds if env_end else None
            time.sleep(0.001)  # the execve has no event to wait on; it takes well under this


def _read_environ_once(pid: int) -> bytes | None:
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _environ_bounds(pid: int) -> tuple[str, int, int, int] | None:
    """The process's state, flags, ``env_start`` and ``env_end`` from its stat line (the
    last two are 0 while it has no memory, or an execve has not set them yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # from field 3, the state
    try:
        return fields[0].decode(), int(fields[6]), int(fields[47]), int(fields[48])
    except (IndexError, ValueError):
        return None


def env_value(environ: bytes, name: bytes) -> bytes | None:
    prefix = name + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :]
    return None


_boot_id: str | None = None


def boot_id() -> str:
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as file:
                _boot_id = file.read().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


@functools.cache
def _boot_time() -> float:
    """The boot time as /proc/stat states it (psutil.boot_time() reads the same line).

    Read once: it only changes with a reboot, and a reboot ends this process too.
    """
    with open("/proc/stat", "rb") as file:
        for line in file:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise RuntimeError("no btime line in /proc/stat")


def create_time(ticks: int) -> float:
    """The process creation time exactly as ``psutil.Process.create_time()`` computes it."""
    return float(ticks) / CLOCK_TICKS + _boot_time()


# --- spawning ------------------------------------------------------------------------


def open_output(path: str) -> int:
    """An append-only fd on a capture file (created 0600, parent directory if needed)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)
    except OSError as exc:
        raise RunnerError(f"cannot open output file {path}: {exc.strerror}") from None


_devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def spawn(
    executable: str, argv: list[str], *, cwd: str, env: dict[str, str], stdout: int, stderr: int
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start the process in its own session: (pid, the Popen if one was used).

    OSError/ValueError as the exec or chdir failure. glibc's posix_spawn when it can
    (see ``_spawn``), else Popen, which forks with vfork when it can (no preexec_fn, no
    user/group change) and reports an exec or chdir failure with the file name.
    """
    if _spawn.AVAILABLE:
        for text in (executable, cwd, *argv, *env, *env.values()):
            if "\0" in text:
                raise ValueError("embedded null byte")
        for key in env:
            if not key or "=" in key:
                raise ValueError(f"illegal environment variable name {key!r}")
        pid = _spawn.spawn(executable, argv, cwd=cwd, env=env, stdin=_devnull,
                           stdout=stdout, stderr=stderr)
        return pid, None
    popen = subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        close_fds=True,
        start_new_session=True,
    )
    return popen.pid, popen


# --- signals ----------------------------------------------------------------------------


def open_verified(pid: int, ticks: int) -> int | None:
    """A pidfd on exactly the process ``(pid, ticks)``, or None if it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    info = read_stat(pid)
    if info is None or info.ticks != ticks or info.zombie:
        os.close(fd)
        return None
    return fd


def send(pidfd: int, sig: int) -> bool:
    """Signal the process behind ``pidfd``; False if it has already exited."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def pidfd_exited(pidfd: int) -> bool:
    """True once the process behind ``pidfd`` has exited (never blocks)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def wait_pidfds(pidfds: Iterable[int], deadline: float) -> list[int]:
    """Block until every process exits or ``deadline`` (monotonic) passes; the live ones."""
    alive = [fd for fd in pidfds if not pidfd_exited(fd)]
    poller = select.poll()
    for fd in alive:
        poller.register(fd, select.POLLIN)
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(max(1, int(remaining * 1000))):
            poller.unregister(fd)
            alive.remove(fd)
    return alive


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- the process table ---------------------------------------------------------------


class ProcessTable:
    """One scan of /proc: every process, the run id of each tree root that has one, and
    the indexes that membership queries need (built once, in the scanning thread)."""

    __slots__ = ("_by_run_id", "by_group", "by_session", "last_pid", "procs", "run_ids", "tree")

    def __init__(self, procs: dict[int, ProcInfo], run_ids: dict[int, bytes],
                 newest: int | None = None) -> None:
        self.procs = procs
        self.run_ids = run_ids  # pid -> HIVE_RUN_ID, for the roots that carry one
        self.last_pid = newest  # the last pid allocated before the scan began
        self.tree: dict[int, list[int]] = {}
        self.by_group: dict[int, list[int]] = {}
        self.by_session: dict[int, list[int]] = {}
        self._by_run_id: dict[bytes, list[int]] | None = None
        for info in procs.values():
            self.tree.setdefault(info.ppid, []).append(info.pid)
            self.by_group.setdefault(info.pgid, []).append(info.pid)
            self.by_session.setdefault(info.sid, []).append(info.pid)

    def roots_of(self, run_id: bytes) -> list[int]:
        """The tree roots carrying ``run_id`` (indexed on first use)."""
        if self._by_run_id is None:
            index: dict[bytes, list[int]] = {}
            for root, value in self.run_ids.items():
                index.setdefault(value, []).append(root)
            self._by_run_id = index
        return self._by_run_id.get(run_id, [])

    def members(self, *, pid: int, pgid: int, ticks: int, run_id: bytes | None,
                main_alive: bool) -> list[ProcInfo]:
        """The live processes of one service instance, the main process excluded.

        ``ticks`` is the main process's start: nothing older belongs to it. The group and
        session numbers are trusted only while they cannot have been reused: as long as
        the main process is unreaped, or no other process now holds that number as pid.
        """
        procs = self.procs
        seeds: list[int] = []
        if main_alive and pid in procs:
            seeds.append(pid)
        if main_alive or pgid not in procs:
            seeds += self.by_group.get(pgid, ())
            seeds += self.by_session.get(pgid, ())
        if run_id:
            seeds += self.roots_of(run_id)
        tree = self.tree
        me = os.getpid()
        found: set[int] = set()
        while seeds:
            current = seeds.pop()
            if current in found or current == me:  # never through the daemon's own tree
                continue
            found.add(current)
            seeds += tree.get(current, ())
        return [
            procs[p] for p in found
            if p != pid and not procs[p].zombie and procs[p].ticks >= ticks
        ]


def last_pid() -> int | None:
    """The pid the kernel allocated last in our pid namespace (threads included), from
    /proc/loadavg; None if unknown. Pids are handed out in increasing order, wrapping
    around at pid_max: what was created after a moment has a pid after this one's."""
    try:
        fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 256).split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def _allocated_between(pid: int, since: int, until: int) -> bool:
    return since < pid <= until if since <= until else (pid > since or pid <= until)


# The last answer of new_processes: the stops of one batch ask the same question one
# after the other (same ``since``, and usually the same ``until``), and a listing of
# /proc for each would cost more than everything else they do.
_new_processes_memo: tuple[int, int, float, list[ProcInfo]] | None = None
_NEW_PROCESSES_TTL = 0.05


def new_processes(since: int, until: int) -> list[ProcInfo]:
    """The live processes whose pid was allocated after ``since``, up to ``until``."""
    global _new_processes_memo
    now = time.monotonic()
    memo = _new_processes_memo
    if memo is not None and memo[:2] == (since, until) and now - memo[2] < _NEW_PROCESSES_TTL:
        return [info for info in memo[3] if not _gone(info)]
    found = _list_new_processes(since, until)
    _new_processes_memo = (since, until, now, found)
    return found


# More forks a second than any machine keeps up: how far a short run can move the pids.
_FORK_RATE_BOUND = 100_000


@functools.cache
def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as file:
            return int(file.read())
    except (OSError, ValueError):
        return 32768  # the kernel's default


def created_since(pid: int, ticks: int) -> list[ProcInfo] | None:
    """The live processes created after process ``pid`` (which started at ``ticks``),
    found by their pids alone, oldest first; None when the pid numbers may have come
    round since (then only a whole scan can tell)."""
    now = _last_pid_since(pid, ticks)
    if now is None:
        return None
    found = [info for info in _list_new_processes(pid, now) if info.ticks >= ticks]
    return sorted(found, key=lambda info: info.ticks)


def none_created_since(pid: int, ticks: int) -> bool:
    """True when no process (nor thread) at all was created after process ``pid``
    (which started at ``ticks``): one read, no look at /proc's entries."""
    return _last_pid_since(pid, ticks) == pid


def _last_pid_since(pid: int, ticks: int) -> int | None:
    """The last pid allocated, if every pid after ``pid`` up to it was allocated after
    process ``pid`` started; None when the numbers may have come round since."""
    now = last_pid()
    if now is None or now < pid:
        return None
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / CLOCK_TICKS
    if age * _FORK_RATE_BOUND >= _pid_max():
        return None
    return now


def _gone(info: ProcInfo) -> bool:
    stat = read_stat(info.pid)
    return stat is None or stat.zombie or stat.ticks != info.ticks


def _list_new_processes(since: int, until: int) -> list[ProcInfo]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _allocated_between(int(name), since, until):
            info = read_stat(int(name))
            if info is not None and not info.zombie:
                found.append(info)
    return found


# The daemon's own children that lead their session (the script runner's main
# processes): pid -> start ticks. A scan takes their line from here instead of reading
# it: a session leader can change neither its group nor its session, and its parent is
# this daemon until it is reaped. An entry goes before the reap, while the pid is held.
_own_leaders: dict[int, int] = {}


def note_own_leader(pid: int, ticks: int) -> None:
    """``pid`` (started at ``ticks``) is an unreaped child of this process that called
    setsid: scans need not read its stat (a tenth of a stop's time for a hundred)."""
    _own_leaders[pid] = ticks


def forget_own_leader(pid: int) -> None:
    """Call before reaping ``pid``."""
    _own_leaders.pop(pid, None)


def _scan() -> ProcessTable:
    newest = last_pid()  # before the scan: whatever is created later has a later pid
    me = os.getpid()
    leaders = _own_leaders
    procs: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            pid = int(name)
            ticks = leaders.get(pid)
            if ticks is not None:
                # Its state is not read: one that exited shows as sleeping until reaped.
                procs[pid] = ProcInfo(pid, me, pid, pid, ticks, "S")
                continue
            info = read_stat(pid)
            if info is not None:
                procs[pid] = info
    # Read the environment only of tree roots: processes whose parent is gone or in
    # another session. Anything else inherited its parent's membership.
    run_ids: dict[int, bytes] = {}
    for info in procs.values():
        if info.zombie or info.ppid in (0, 2, me):  # kernel threads, our own children
            continue
        parent = procs.get(info.ppid)
        if parent is not None and parent.sid == info.sid:
            continue
        environ = read_environ(info.pid)
        if environ and _RUN_ID_PREFIX in environ:
            value = env_value(environ, RUN_ID_VAR.encode())
            if value:
                run_ids[info.pid] = value
    return ProcessTable(procs, run_ids, newest)


_scan_lock = threading.Lock()
_last_scan: tuple[float, ProcessTable] | None = None
last_scan_seconds = 0.0  # how long the last scan took


def cached_table(not_before: float) -> ProcessTable | None:
    """The last table if it was scanned no earlier than ``not_before``, else None."""
    last = _last_scan
    return last[1] if last is not None and last[0] >= not_before else None


def process_table(not_before: float) -> ProcessTable:
    """A table scanned no earlier than ``not_before`` (monotonic). Blocking: call it from a
    worker thread. Concurrent callers share one scan, so stopping 500 services at once
    costs a few scans, not 500."""
    global _last_scan, last_scan_seconds
    with _scan_lock:
        if _last_scan is not None and _last_scan[0] >= not_before:
            return _last_scan[1]
        started = time.monotonic()
        table = _scan()
        _last_scan = (started, table)
        last_scan_seconds = time.monotonic() - started
        return table


def classify_spawn_error(exc: OSError, *, executable: str, cwd: str) -> RunnerError:
    """The user's version of a failed spawn."""
    if exc.filename == cwd and exc.filename != executable:
        if isinstance(exc, FileNotFoundError):
            return RunnerError(f"working directory {cwd} does not exist")
        if isinstance(exc, NotADirectoryError):
            return RunnerError(f"working directory {cwd} is not a directory")
        if isinstance(exc, PermissionError):
            return RunnerError(f"working directory {cwd} is not accessible (permission denied)")
        return RunnerError(f"cannot enter working directory {cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        return RunnerError(f"cannot run {executable}: no such file (or its #! interpreter is missing)")
    if isinstance(exc, PermissionError):
        return RunnerError(f"cannot run {executable}: permission denied")
    if exc.errno == errno.E2BIG:
        return RunnerError("cannot start: the command line and environment are too large")
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return RunnerError(f"cannot start a process: {exc.strerror} (process or memory limit)")
    if exc.errno == errno.ETXTBSY:
        return RunnerError(f"cannot run {executable}: the file is being written")
    return RunnerError(f"cannot run {executable}: {exc.strerror or exc}")
