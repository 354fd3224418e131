"""The script runner: a service is a local command, run in its own session.

- **Start.** A command of plain words is executed directly; a ``run`` that starts with
  ``#!`` is written to a script file and executed, so its interpreter runs it (see
  :mod:`runners._shebang`); anything else runs under ``<shell> -c`` (see
  :mod:`runners._command`). The child gets its own session and process
  group, ``/dev/null`` as stdin, and appends its stdout and stderr to memory captures
  (memfds, :mod:`runners._capture`) whose descriptors the handle hands to the daemon
  (:meth:`ScriptHandle.take_output`): no disk, so a full one never fails its writes. It
  holds no pipe to the daemon and no parent-death signal, so it outlives a daemon that
  is killed, and a later daemon adopts it from :meth:`ScriptHandle.record`, reopening its
  memory captures through ``/proc/PID/fd``.
- **Exit.** Noticed through a pidfd becoming readable (no polling, no SIGCHLD handler);
  the status comes from ``waitid(P_PIDFD)`` when the process is our child (an adopted
  process is not: its status is unknown, ``ExitStatus(None, None)``).
- **Stop.** The stop signal goes to the process group and to every process of the
  service found outside it; after the grace period whatever remains is SIGKILLed. When
  the main process exits on its own and leaves processes behind, those get the same
  treatment in the background, and :meth:`ScriptHandle.leftovers` counts them.

The block (:class:`ScriptConfig`: ``run``, ``working_dir``, ``shell``) is the one the
config layer types for the daemon: it resolves ``working_dir`` against the project and
renders the runtime templates of ``run``, and hands them over as ``RunSpec.command``,
``working_dir`` and ``shell`` (``RunSpec.config`` stays empty), so the runner reads
those fields.

Every process of a start carries ``HIVE_RUN_ID=<fqn>/<random>`` in its environment, which
is how the runner finds the ones that left the session (see :mod:`runners._process`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec
from anyio.lowlevel import RunVar

from . import _process as proc
from ._capture import MemoryCapture, reopen_capture
from ._command import Plan, plan_command
from ._shebang import is_script, write_script
from ._watch import SharedWatch
from .base import (
    ConfigProblem,
    ExitStatus,
    Runner,
    RunnerConfig,
    RunnerError,
    RunSpec,
    ServiceHandle,
    StopFailed,
    valid_stop_signal,
)

__all__ = ["RUN_ID_VAR", "ScriptConfig", "ScriptHandle", "ScriptRunner"]

RUN_ID_VAR = proc.RUN_ID_VAR
# How long processes get to vanish after SIGKILL before stop() gives up on them.
KILL_TIMEOUT = 5.0
# How many times the final sweep looks again for processes forked during the kill.
_SWEEPS = 3
# A scan of /proc that took less than this runs in the event loop rather than a thread.
INLINE_SCAN = 0.005


class ScriptConfig(RunnerConfig, frozen=True, kw_only=True):
    """The ``script`` block."""

    run: str  # the command: plain words run directly, anything else through the shell
    working_dir: str = "."  # relative to the project root
    shell: str | None = None  # None: $SHELL if POSIX-like, else /bin/sh (when one is needed)

    def check(self) -> list[ConfigProblem]:
        return [] if self.run.strip() else [ConfigProblem(("run",), "'run' is required")]


class ScriptRunner(Runner):
    """Runs a service's ``run`` command as a local process tree."""

    name: ClassVar[str] = "script"
    Config: ClassVar[type[ScriptConfig]] = ScriptConfig

    async def start(self, spec: RunSpec) -> ScriptHandle:
        await anyio.lowlevel.checkpoint_if_cancelled()
        return _spawn(spec)

    async def stop_many(
        self, handles: Sequence[ServiceHandle], stop_signal: int, grace: float
    ) -> None:
        """Stop many instances in one sweep: one look at the process table, every signal
        sent at once, one wait for them all, then the stragglers killed together.

        Each instance gets what ``stop()`` gives it; what this saves is the work per
        instance (its own task, scan, timers), which dominates stopping a large project.
        """
        stop_signal = valid_stop_signal(stop_signal)
        grace = max(0.0, grace)
        batch: list[ScriptHandle] = []
        others: list[ServiceHandle] = []
        for handle in handles:
            if isinstance(handle, ScriptHandle) and handle._stop_done is None and handle._status is None:
                handle._stop_done = anyio.Event()
                handle._stopping = True
                batch.append(handle)
            else:
                others.append(handle)
        failures: list[tuple[ServiceHandle, str]] = []
        try:
            if batch:
                started = time.monotonic()
                table = await _fresh_table(started)
                members = [handle._signal(table, stop_signal) for handle in batch]
                with anyio.move_on_after(max(0.0, started + grace - time.monotonic())):
                    for handle in batch:
                        await handle._wait_all()
                stragglers = [h for h in batch if h._status is None or h._tracked_alive()]
                for handle in stragglers:
                    handle._kill_now()
                with anyio.move_on_after(KILL_TIMEOUT):
                    for handle in stragglers:
                        await handle._wait_all()
                failures = [(h, f"process {h.pid} did not exit after SIGKILL")
                            for h in batch if h._status is None]
                await _sweep(list(zip(batch, members, strict=True)), table.last_pid)
        except BaseException:
            for handle in batch:
                if not handle._detached:
                    handle._kill_now()  # cancelled or failed half-way: leave nothing running
            raise
        finally:
            for handle in batch:
                handle._untrack_all(in_loop=True)
                assert handle._stop_done is not None
                handle._stop_done.set()
        if others:
            try:
                await super().stop_many(others, stop_signal, grace)
            except StopFailed as exc:
                failures += exc.failed
        if failures:
            raise StopFailed(failures)

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ScriptHandle | None:
        """Take over the process in ``record`` if it still runs and is the same process.

        None when it is gone, a zombie, or its pid now belongs to another process (the
        start time differs). RunnerError when the record is not one of ours.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            pid = int(record["pid"])
            pgid = int(record.get("pgid", pid))
            ticks = int(record["ticks"]) if record.get("ticks") is not None else None
            start_time = float(record["start_time"]) if record.get("start_time") is not None else None
            run_id = str(record["run_id"]) if record.get("run_id") else None
            boot = str(record.get("boot_id") or "")
        except (KeyError, TypeError, ValueError):
            raise RunnerError(f"not a script runner process record: {record!r}") from None
        if pid <= 0 or (ticks is None and start_time is None):
            raise RunnerError(f"not a script runner process record: {record!r}")
        try:
            pidfd = os.pidfd_open(pid)
        except (ProcessLookupError, ValueError, OverflowError):
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise RunnerError(f"cannot watch process {pid}: {exc.strerror}") from None
        info = proc.read_stat(pid)
        if info is None or info.zombie or not _same_process(info.ticks, ticks, start_time, boot):
            os.close(pidfd)
            return None
        # Its output is still in the memory captures it holds: reopened, not lost.
        output = (
            reopen_capture(pid, 1, spec.fqn, "stdout", pgid) if spec.memory_capture and spec.stdout_path else -1,
            reopen_capture(pid, 2, spec.fqn, "stderr", pgid) if spec.memory_capture and spec.stderr_path else -1,
        )
        return ScriptHandle(
            spec=spec, pid=pid, pgid=pgid, ticks=info.ticks, pidfd=pidfd,
            run_id=run_id, popen=None, adopted=True, output=output,
        )

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        """Records of running instances of ``spec.fqn`` that a killed daemon started but
        may not have recorded, newest first.

        A start is recognised by its run id (``<fqn>/...``) and by ``marker`` as the value of
        the variable that holds it in ``spec.env``; its main process is the oldest process
        of that start still running that leads its own session (if the main process is gone,
        that can be a descendant that made its own session: the best there is to adopt).
        """
        table = await _fresh_table(time.monotonic())
        marker_keys = [key for key, value in spec.env.items() if value == marker]
        wanted = {f"{key}={marker}".encode() for key in marker_keys}
        prefix = f"{spec.fqn}/".encode()
        mains: dict[bytes, proc.ProcInfo] = {}
        for pid, run_id in table.run_ids.items():
            info = table.procs[pid]
            if not run_id.startswith(prefix) or info.sid != pid:
                continue
            best = mains.get(run_id)
            if best is not None and (best.ticks, best.pid) < (info.ticks, info.pid):
                continue
            environ = proc.read_environ(pid)
            if environ is None:
                continue
            entries = environ.split(b"\0")
            if wanted:
                if not wanted & set(entries):
                    continue
            elif not any(entry.endswith(b"=" + marker.encode()) for entry in entries):
                continue
            mains[run_id] = info
        found = sorted(mains.values(), key=lambda info: info.ticks, reverse=True)
        return [
            _record(info.pid, info.sid, info.ticks, table.run_ids[info.pid].decode())
            for info in found
        ]


def _same_process(ticks: int, recorded_ticks: int | None, start_time: float | None, boot: str) -> bool:
    if recorded_ticks is not None and boot and proc.boot_id():
        return boot == proc.boot_id() and ticks == recorded_ticks
    if recorded_ticks is not None and start_time is None:
        return ticks == recorded_ticks
    # Only a wall-clock start time: psutil's figure moves with clock steps, and its
    # resolution is one tick; a second covers both, and no pid is reused within a second.
    assert start_time is not None
    return abs(proc.create_time(ticks) - start_time) < 1.0


def _record(pid: int, pgid: int, ticks: int, run_id: str | None) -> dict[str, Any]:
    return {
        "pid": pid,
        "pgid": pgid,
        "start_time": proc.create_time(ticks),
        "ticks": ticks,
        "boot_id": proc.boot_id(),
        "run_id": run_id,
    }


# --- start ---------------------------------------------------------------------------------


def _spawn(spec: RunSpec) -> ScriptHandle:
    cwd = os.path.abspath(spec.working_dir or ".")
    try:
        if not stat.S_ISDIR(os.stat(cwd).st_mode):
            raise RunnerError(f"working directory {cwd} is not a directory")
    except (FileNotFoundError, NotADirectoryError):
        raise RunnerError(f"working directory {cwd} does not exist") from None
    except PermissionError:
        raise RunnerError(f"working directory {cwd} is not accessible (permission denied)") from None
    except ValueError:
        raise RunnerError("the working directory contains a NUL character") from None
    # os.urandom rather than secrets: the same bytes, without loading hmac and hashlib.
    run_id = f"{spec.fqn}/{os.urandom(8).hex()}"
    env = dict(spec.env)
    env[RUN_ID_VAR] = run_id
    if is_script(spec.command):
        path = write_script(spec.command, fqn=spec.fqn, cwd=cwd,
                            stdout_path=spec.stdout_path, stderr_path=spec.stderr_path)
        plan = Plan(path, [path], "script")
    else:
        plan = plan_command(spec.command, spec.shell, env, cwd)
    out, err = _open_captures(spec)
    captures = [c for c in (out, err) if c is not None and c.reader >= 0]
    stdout = out.writer if out is not None else subprocess.DEVNULL
    stderr = err.writer if err is not None else subprocess.DEVNULL
    try:
        try:
            pid, popen = proc.spawn(plan.executable, plan.argv, cwd=cwd, env=env,
                                    stdout=stdout, stderr=stderr)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC or plan.mode != "direct":
                raise
            # A script without a #! line: a shell runs it, as execvp(3) would.
            plan = plan_command(spec.command, None, env, cwd, force_shell=True)
            pid, popen = proc.spawn(plan.executable, plan.argv, cwd=cwd, env=env,
                                    stdout=stdout, stderr=stderr)
    except BaseException as exc:
        for started in captures:
            started.close()  # nothing started: nothing to read
        if isinstance(exc, OSError):
            raise proc.classify_spawn_error(exc, executable=plan.executable, cwd=cwd) from None
        if isinstance(exc, ValueError):  # a NUL byte in an argument or the environment, a bad name
            raise RunnerError(f"cannot start: {exc}") from None
        raise
    finally:
        for maybe in (out, err):
            if maybe is not None:
                maybe.close_writer()  # the child has its own
    output = (out.reader if out is not None else -1, err.reader if err is not None else -1)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        # Nothing could watch it: do not leave it running unsupervised.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for started in captures:
            started.close()
        raise RunnerError(f"cannot watch the new process: {exc.strerror}") from None
    # The start time (its identity for adoption) is read when first needed, not now:
    # /proc/PID/stat of a process still in execve waits for the exec to finish.
    return ScriptHandle(spec=spec, pid=pid, pgid=pid, ticks=None, pidfd=pidfd, run_id=run_id,
                        popen=popen, mode=plan.mode, output=output)


def _open_captures(spec: RunSpec) -> tuple[MemoryCapture | None, MemoryCapture | None]:
    """What the child writes its (stdout, stderr) to: memory captures when the daemon
    asked for them (a full disk must never fail the service's write()), else the files
    the spec names (whose readers are -1: nothing for the daemon to take over)."""
    if spec.memory_capture:
        out: MemoryCapture | None = None
        try:
            out = MemoryCapture(spec.fqn, "stdout") if spec.stdout_path else None
            err = MemoryCapture(spec.fqn, "stderr") if spec.stderr_path else None
            return out, err
        except OSError:
            # No memfd here (a seccomp filter, an old kernel): the files, as before.
            if out is not None:
                out.close()
    out = MemoryCapture.of_file(proc.open_output(spec.stdout_path)) if spec.stdout_path else None
    if not spec.stderr_path:
        return out, None
    if spec.stderr_path == spec.stdout_path and out is not None:
        return out, MemoryCapture.of_file(os.dup(out.writer))
    try:
        return out, MemoryCapture.of_file(proc.open_output(spec.stderr_path))
    except BaseException:
        if out is not None:
            out.close()
        raise


# --- the handle ----------------------------------------------------------------------------


class ScriptHandle(ServiceHandle):
    """One running process tree. ``pid`` is the main process (the session leader)."""

    pid: int

    def __init__(
        self,
        *,
        spec: RunSpec,
        pid: int,
        pgid: int,
        ticks: int | None,
        pidfd: int,
        run_id: str | None,
        popen: subprocess.Popen[bytes] | None,
        mode: str | None = None,
        adopted: bool = False,
        output: tuple[int, int] = (-1, -1),
    ) -> None:
        self.pid = pid
        self.pgid = pgid
        self._ticks = ticks
        self.run_id = run_id
        self.adopted = adopted
        self.mode = mode  # "direct", "shell" or "script" for a start; None when adopted
        # The spec without its environment: a handle lives as long as its service, and
        # the environment (often a hundred variables) is only needed to start it.
        self._spec = msgspec.structs.replace(spec, env={}) if spec.env else spec
        self._popen = popen  # kept so that Popen.__del__ never reaps our child
        self._pidfd = pidfd
        self._status: ExitStatus | None = None
        self._watch = SharedWatch()
        self._stopping = False
        self._detached = False  # the daemon left it running (see detach())
        self._stop_done: anyio.Event | None = None
        self._sweeper: _Sweeper | None = None
        self._tracked_lock = threading.Lock()
        self._tracked: dict[int, int] = {}  # pid -> pidfd, during a stop
        # The daemon's descriptors on the memory captures, until take_output().
        self._output: tuple[int, int] | None = output if output != (-1, -1) else None

    def __repr__(self) -> str:
        state = self._status.describe() if self._status is not None else "running"
        return f"<ScriptHandle {self._spec.fqn} pid={self.pid} {state}>"

    def take_output(self) -> tuple[int, int] | None:
        output, self._output = self._output, None
        return output

    def _close_output(self) -> None:
        output, self._output = getattr(self, "_output", None), None
        for fd in output or ():
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __del__(self) -> None:
        self._close_output()  # never handed over (a stray stopped at adoption)
        if getattr(self, "_status", True) is None:  # never reaped through _reap(): still listed
            proc.forget_own_leader(self.pid)
        if getattr(self, "_pidfd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1

    @property
    def ticks(self) -> int:
        """The process's start time in clock ticks since boot (0 once it is reaped)."""
        if self._ticks is None:
            info = proc.read_stat(self.pid) if self._status is None else None
            self._ticks = info.ticks if info is not None else 0
            if info is not None and not self.adopted and info.sid == self.pid:
                proc.note_own_leader(self.pid, info.ticks)
        return self._ticks

    @property
    def status(self) -> ExitStatus | None:
        """How the main process ended; None while it runs."""
        return self._status

    def record(self) -> dict[str, Any]:
        """``pid``, ``pgid``, ``start_time`` (psutil's create_time), plus ``ticks`` and
        ``boot_id`` (the exact identity) and ``run_id``; plain JSON values."""
        return _record(self.pid, self.pgid, self.ticks, self.run_id)

    # --- exit ------------------------------------------------------------------------

    async def wait(self) -> ExitStatus:
        await self._watch.until(lambda: self._status is not None, self._watch_exit)
        assert self._status is not None
        return self._status

    async def _watch_exit(self) -> None:
        await anyio.wait_readable(self._pidfd)
        status = self._reap()
        if status is None:  # readable but not yet waitable: should not happen
            status = await anyio.to_thread.run_sync(self._reap, True)
            assert status is not None
        self._finish(status)

    def _reap(self, block: bool = False) -> ExitStatus | None:
        """The exit status, collected through the pidfd: exactly this process, never
        another child that may since hold the same number. None if not yet exited."""
        flags = os.WEXITED | (0 if block else os.WNOHANG)
        if self._ticks is None:
            self.ticks  # noqa: B018 - read while the zombie still holds its /proc entry
        proc.forget_own_leader(self.pid)  # before the pid may be handed out again
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, flags)
        except ChildProcessError:
            return ExitStatus()  # not our child (adopted): the status is its parent's
        if result is None or result.si_pid == 0:
            return None
        if result.si_code == os.CLD_EXITED:
            return ExitStatus(exit_code=result.si_status)
        return ExitStatus(signal=result.si_status)  # CLD_KILLED, CLD_DUMPED

    def _finish(self, status: ExitStatus) -> None:
        self._status = status
        self._close_output()  # never handed over: no one will read them
        if self._popen is not None and self._popen.returncode is None:
            if status.exit_code is not None:
                self._popen.returncode = status.exit_code
            else:
                self._popen.returncode = -(status.signal or 0)
        if self._pidfd >= 0:
            # No notify_closing: the one watch of this pidfd (SharedWatch) has returned
            # from its wait, so nothing is registered on it any more.
            os.close(self._pidfd)
            self._pidfd = -1
        if not self._stopping and not (self._ticks and proc.none_created_since(self.pid, self._ticks)):
            # It ended by itself: stop what it left behind, without holding up the
            # restart. (Nothing was created after it: it left nothing, and a crash loop
            # pays for no thread.)
            self._sweeper = _Sweeper(self, self._spec.stop_signal, self._spec.stop_grace)
            self._sweeper.start()

    # --- leftovers -------------------------------------------------------------------

    def leftovers(self) -> int:
        """Processes of this instance still alive besides the main one: those a stop in
        progress is waiting for, or those the main process left behind when it exited on
        its own (being stopped in the background). Right after such an exit this may block
        for the few milliseconds the scan of the process table takes."""
        sweeper = self._sweeper
        if sweeper is not None:
            sweeper.scanned.wait(1.0)
        with self._tracked_lock:
            return sum(1 for fd in self._tracked.values() if not proc.pidfd_exited(fd))

    def _track(self, members: list[proc.ProcInfo]) -> list[int]:
        """Open pidfds on ``members`` (those not tracked yet); the new pidfds."""
        new = []
        with self._tracked_lock:
            for info in members:
                if info.pid in self._tracked:
                    continue
                fd = proc.open_verified(info.pid, info.ticks)
                if fd is not None:
                    self._tracked[info.pid] = fd
                    new.append(fd)
        return new

    def _untrack_all(self, *, in_loop: bool) -> None:
        with self._tracked_lock:
            fds = list(self._tracked.values())
            self._tracked.clear()
        for fd in fds:
            if in_loop:
                anyio.notify_closing(fd)
            os.close(fd)

    def _members(self, table: proc.ProcessTable) -> list[proc.ProcInfo]:
        return table.members(
            pid=self.pid, pgid=self.pgid, ticks=self.ticks,
            run_id=self.run_id.encode() if self.run_id else None,
            main_alive=self._status is None,
        )

    def _claim(self, fresh: list[proc.ProcInfo], known: set[int],
               environs: dict[int, bytes | None] | None = None) -> list[proc.ProcInfo]:
        """Which of ``fresh`` (processes created since the first look, oldest first) joined
        this instance. Nothing that was not a member then can have become one since: a
        process joins a service only by being born into it. ``environs`` keeps the
        environments read, for the other instances of one sweep."""
        environs = {} if environs is None else environs
        group_is_ours = self._status is None or proc.read_stat(self.pgid) is None
        run_id = self.run_id.encode() if self.run_id else None
        members = set(known)
        found: list[proc.ProcInfo] = []
        changed = True
        while changed:  # a child can be listed before its parent: repeat until stable
            changed = False
            for info in fresh:
                if info.pid in members or info.pid == os.getpid():
                    continue
                belongs = info.ppid in members or (
                    group_is_ours and self.pgid in (info.pgid, info.sid)
                )
                if not belongs and run_id is not None:
                    if info.pid not in environs:
                        environs[info.pid] = proc.read_environ(info.pid)
                    environ = environs[info.pid]
                    belongs = environ is not None and proc.env_value(environ, RUN_ID_VAR.encode()) == run_id
                if belongs:
                    members.add(info.pid)
                    found.append(info)
                    changed = True
        return found

    # --- stop --------------------------------------------------------------------------

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        stop_signal = valid_stop_signal(stop_signal)
        grace = max(0.0, grace)
        if self._stop_done is not None:  # a stop is under way: share its outcome
            await self._stop_done.wait()
            return await self.wait()
        self._stop_done = anyio.Event()
        try:
            if self._status is not None:
                sweeper = self._sweeper
                if sweeper is not None:
                    await anyio.to_thread.run_sync(sweeper.done.wait, abandon_on_cancel=True)
                return self._status
            self._stopping = True
            return await self._terminate(stop_signal, grace)
        finally:
            self._stop_done.set()

    async def _terminate(self, stop_signal: int, grace: float) -> ExitStatus:
        started = time.monotonic()
        try:
            # The checkpoint first lets the other stops requested at the same moment get
            # here too, so that one scan of the process table serves them all.
            await anyio.lowlevel.checkpoint()
            table = await _fresh_table(started)
            members = self._signal(table, stop_signal)
            with anyio.move_on_after(max(0.0, started + grace - time.monotonic())):
                await self._wait_all()
            if self._status is None or self._tracked_alive():
                self._kill_now()
                with anyio.move_on_after(KILL_TIMEOUT):
                    await self._wait_all()
                if self._status is None:
                    raise RunnerError(f"process {self.pid} did not exit after SIGKILL")
            await _sweep([(self, members)], table.last_pid)
            return self._status
        except BaseException:
            if not self._detached:
                self._kill_now()  # cancelled or failed half-way: leave nothing running
            raise
        finally:
            self._untrack_all(in_loop=True)

    def detach(self) -> None:
        self._detached = True

    def _signal(self, table: proc.ProcessTable, stop_signal: int) -> list[proc.ProcInfo]:
        """Send the stop signal to every process of the instance; its members (tracked).

        Who belongs to it is taken from ``table``, scanned before the signal, which
        makes some of them exit and their children lose their parent. SIGCONT follows,
        as systemd does, so that a stopped process acts on the signal now rather than
        when someone resumes it. Always: a SIGSTOP still on its way does not show in the
        table, and a SIGCONT to a process that is not stopped wakes nothing (its default
        action is to be ignored), so it costs a syscall, not a context switch.
        """
        members = self._members(table)
        self._track(members)
        main = table.procs.get(self.pid)
        signals = (stop_signal,) if stop_signal in (signal.SIGKILL, signal.SIGCONT) else (
            stop_signal, signal.SIGCONT)
        with self._tracked_lock:
            outside = [self._tracked[m.pid] for m in members
                       if m.pid in self._tracked
                       and (m.pgid != self.pgid or self._status is not None)]
        for sig in signals:
            if self._status is None:
                proc.killpg(self.pgid, sig)  # the leader is unreaped: the pgid is ours
                if main is not None and main.pgid != self.pgid:
                    proc.send(self._pidfd, sig)
            for fd in outside:
                proc.send(fd, sig)
        return members

    async def _wait_all(self) -> None:
        await self.wait()
        await self._wait_tracked()

    def _kill_now(self) -> None:
        if self._status is None:
            proc.killpg(self.pgid, signal.SIGKILL)
            proc.send(self._pidfd, signal.SIGKILL)
        with self._tracked_lock:
            fds = list(self._tracked.values())
        for fd in fds:
            proc.send(fd, signal.SIGKILL)

    def _tracked_alive(self) -> bool:
        with self._tracked_lock:
            return any(not proc.pidfd_exited(fd) for fd in self._tracked.values())

    async def _wait_tracked(self) -> None:
        with self._tracked_lock:
            fds = list(self._tracked.values())
        for fd in fds:
            if not proc.pidfd_exited(fd):
                await anyio.wait_readable(fd)


async def _sweep(stopped: list[tuple[ScriptHandle, list[proc.ProcInfo]]], since: int | None) -> None:
    """Kill what the instances of one stop forked after the first look (whose newest pid
    was ``since``), or what escaped it; no grace left. One look at the processes created
    since then serves every instance of the stop."""
    known = {handle: {handle.pid, *(m.pid for m in members)} for handle, members in stopped}
    for _ in range(_SWEEPS):
        now = proc.last_pid()
        if since is None or now is None:  # the kernel did not say which pids are new: look at all
            table = await _fresh_table(time.monotonic())
            found = {handle: handle._members(table) for handle in known}
        elif now == since:
            return  # no process at all was created since: nothing to look at
        else:
            fresh = sorted(proc.new_processes(since, now), key=lambda info: info.ticks)
            environs: dict[int, bytes | None] = {}  # each new process's read once, not per instance
            found = {handle: handle._claim(fresh, known[handle], environs) for handle in known}
            since = now
        tracked = []
        for handle, members in found.items():
            known[handle].update(m.pid for m in members)
            tracked += handle._track(members)
        if not tracked:
            return
        for fd in tracked:
            proc.send(fd, signal.SIGKILL)
        with anyio.move_on_after(KILL_TIMEOUT):
            for handle in known:
                await handle._wait_tracked()


class _ScanBatch:
    def __init__(self, started: float) -> None:
        self.started = started
        self.done = anyio.Event()
        self.table: proc.ProcessTable | None = None


# The scan in flight in this event loop, if any: concurrent stops share it.
_scan_batch: RunVar[_ScanBatch | None] = RunVar("hive_script_scan_batch", default=None)


async def _fresh_table(not_before: float) -> proc.ProcessTable:
    """A process table scanned no earlier than ``not_before`` (monotonic).

    The scan runs in a worker thread; the stops that need one at the same time share a
    single scan and a single thread hop (stopping 500 services takes a handful of scans).
    """
    while True:
        table = proc.cached_table(not_before)
        if table is not None:
            return table
        if proc.last_scan_seconds < INLINE_SCAN:
            # A small process table: scanning costs less than the trip to a thread (whose
            # every syscall would wait for the GIL while the loop is busy).
            return proc.process_table(not_before)
        batch = _scan_batch.get()
        if batch is not None:
            await batch.done.wait()
            if batch.table is not None and batch.started >= not_before:
                return batch.table
            continue  # it started before we needed it: the next batch
        batch = _ScanBatch(time.monotonic())
        _scan_batch.set(batch)
        try:
            batch.table = await anyio.to_thread.run_sync(proc.process_table, batch.started)
        finally:
            _scan_batch.set(None)
            batch.done.set()
        return batch.table



class _Sweeper(threading.Thread):
    """Stops, in the background, what a main process that exited by itself left behind:
    the stop signal, the grace period, SIGKILL. A thread, so that it needs no task group
    and holds nothing up; it waits on pidfds, it does not poll."""

    def __init__(self, handle: ScriptHandle, stop_signal: int, grace: float) -> None:
        super().__init__(name=f"hive-leftovers-{handle.pid}", daemon=True)
        self.handle = handle
        try:
            self.stop_signal = valid_stop_signal(stop_signal)
        except RunnerError:
            self.stop_signal = signal.SIGTERM
        self.grace = max(0.0, grace)
        self.not_before = time.monotonic()
        self.scanned = threading.Event()
        self.done = threading.Event()

    def _leftovers(self, not_before: float) -> list[proc.ProcInfo]:
        """What is left of the instance. After a short run (a crash loop) only processes
        created since the main one can be, and their pids say which: a scan of the whole
        process table would hold the GIL for milliseconds the restart is waiting for."""
        handle = self.handle
        fresh = proc.created_since(handle.pid, handle.ticks) if handle.ticks else None
        if fresh is None:
            return handle._members(proc.process_table(not_before))
        return handle._claim(fresh, {handle.pid})

    def run(self) -> None:
        handle = self.handle
        try:
            fds = handle._track(self._leftovers(self.not_before))
            self.scanned.set()
            if not fds:
                return
            for fd in fds:
                proc.send(fd, self.stop_signal)
                proc.send(fd, signal.SIGCONT)  # a stopped leftover acts on it now
            alive = proc.wait_pidfds(fds, time.monotonic() + self.grace)
            for _ in range(_SWEEPS):
                for fd in alive:
                    proc.send(fd, signal.SIGKILL)
                proc.wait_pidfds(alive, time.monotonic() + KILL_TIMEOUT)
                alive = handle._track(self._leftovers(time.monotonic()))
                if not alive:
                    break
        finally:
            self.scanned.set()
            handle._untrack_all(in_loop=False)
            self.done.set()
