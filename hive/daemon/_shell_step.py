"""One shell step: a command run to its end with all it started, for hooks, builds and cmd checks.

Hook steps (:mod:`hive.daemon.hooks`), builds (:mod:`hive.daemon.build`) and ``cmd`` health
checks (:mod:`hive.daemon.health`) all run a short-lived command the same way, through
:func:`run_step`:

* **Its own session.** The command starts with ``start_new_session``, so its process group id
  is its pid and one ``killpg`` reaches everything it started. A process that left the group
  itself (``setsid``) is found as the script runner finds a service's: by a mark in its
  environment (``HIVE_STEP_ID``, one value per step), among the processes created since the
  step began. Only one that both left the session and scrubbed its environment is out of
  reach.
* **Output line by line.** stdout and stderr are read as they come and each line goes to the
  caller's sink as ``(stream, line)``; the last non-blank lines of both, in arrival order, are
  kept for the failure message. ``merge_stderr`` sends both through one pipe (stream
  ``"stdout"``) when their relative order matters more than their names.
* **The step is the whole group.** It ends when the command exits, and whatever the command
  left in its group is stopped then: nothing a step starts outlives it. On timeout or
  cancellation the group is stopped too: SIGTERM, up to ``kill_grace`` for the command to exit
  and the pipes to close, then SIGKILL (``kill_grace`` 0: SIGKILL at once). What left the
  group (the mark above) gets SIGKILL with it.
* **Cleanup that holds.** Stopping is shielded and every wait in it has its own deadline, so a
  cancelled caller still gets its group killed and reaped, and waits for that at most about
  ``kill_grace`` plus a few seconds. Spawning is shielded too: cancelled half-way, asyncio would
  kill only the command and leave what it had already started.
* **A result, not an exception.** A missing working directory or program is a
  :class:`StepResult` with ``error`` set; only cancellation propagates.

A process outside the group that still holds a pipe (the ``setsid`` case) cannot hold the step:
once the command has exited, its output gets :data:`_DRAIN_SECONDS` to reach its end (and it
is swept with the group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc
import msgspec

from runners._process import created_since, open_verified, read_environ, read_stat
from runners._shebang import check_interpreter, is_script
from runners.base import RunnerError
from runners.output import pump_lines

__all__ = [
    "KILL_GRACE",
    "LINE_CAP",
    "STEP_ID_VAR",
    "OutputSink",
    "StepResult",
    "cut_line",
    "deliver",
    "resolve_shell",
    "run_shell_step",
    "run_step",
    "short_command",
]

log = logging.getLogger("hive.shell_step")

OutputSink = Callable[[str, str], None]
"""``(stream, text)``: ``stream`` is ``"stdout"``, ``"stderr"`` or ``"hive"`` (Hive's own lines
about the step); ``text`` is one line without its newline."""

POSIX_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
DEFAULT_SHELL = "/bin/sh"
# Between SIGTERM and SIGKILL when a step is stopped (timeout, cancellation, leftovers).
KILL_GRACE = 2.0
# Longer output lines are cut here (the rest of the line is dropped).
LINE_CAP = 64 * 1024
# How long the output of a finished step may take to reach EOF (a process outside the step's
# group may still hold the pipe).
_DRAIN_SECONDS = 1.0
# How long reaping a SIGKILLed process may take before we give up on it.
_REAP_SECONDS = 5.0
# In a step's environment, one value per step: how what left its group is found (see above).
STEP_ID_VAR = "HIVE_STEP_ID"
# Output lines in failure messages are cut to this many characters.
_MESSAGE_LINE_CAP = 200
_COMMAND_CAP = 80


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`run_step` observed.

    When the command ended on its own, ``exit_code`` is its exit status, or ``signal`` the
    signal that killed it (sent by something else than the step's own stop). Both are None when
    it timed out (``timed_out``: the step killed it) or could not start (``error`` says why).
    ``tail`` holds the last non-blank output lines of both streams, in arrival order."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None
    tail: list[str] = []
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def deliver(output: OutputSink, stream: str, text: str) -> None:
    """Hand one line to the sink; a failing sink is the caller's bug, never the step's."""
    try:
        output(stream, text)
    except Exception:
        log.exception("step output sink failed")


def cut_line(line: str, cap: int = _MESSAGE_LINE_CAP) -> str:
    """An output line short enough to quote in a message."""
    return line if len(line) <= cap else line[: cap - 1] + "…"


def short_command(command: str) -> str:
    """A command's first line, cut to fit a log line (``…`` when anything was left out)."""
    lines = [line.strip() for line in command.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if len(lines) > 1 or len(text) > _COMMAND_CAP:
        return text[: _COMMAND_CAP - 1] + "…"
    return text


def _which(name: str, env: Mapping[str, str]) -> str | None:
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name, path=env.get("PATH") or os.defpath)


def resolve_shell(shell: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """``(executable, "")``, or ``(None, problem)``.

    The given ``shell`` (a path, or a name looked up on ``env``'s PATH) if there is one; else
    ``$SHELL`` from ``env`` when it is a POSIX shell (sh, bash, dash, zsh, ksh) that exists;
    else ``/bin/sh``."""
    if shell:
        found = _which(shell, env)
        if found is None:
            where = "" if os.sep in shell else " on PATH"
            return None, f"shell {shell} not found{where}"
        return found, ""
    login = env.get("SHELL", "")
    if login and os.path.basename(login) in POSIX_SHELLS:
        found = _which(login, env)
        if found is not None:
            return found, ""
    if _which(DEFAULT_SHELL, env) is None:
        return None, f"shell {DEFAULT_SHELL} not found"
    return DEFAULT_SHELL, ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_escaped(pid: int, ticks: int, mark: bytes) -> int:
    """SIGKILL every process created since the step's command (``pid``, started at
    ``ticks``) that carries the step's ``mark`` in its environment; how many. Blocking
    (reads /proc): run it in a worker thread."""
    found = created_since(pid, ticks)
    if found is None:  # the pid numbers may have come round: look at every process
        found = [info for info in map(read_stat, _all_pids()) if info is not None and info.ticks >= ticks]
    killed = 0
    for info in found:
        if info.zombie or info.pid == pid:
            continue
        environ = read_environ(info.pid)
        if environ is None or mark not in environ.split(b"\0"):
            continue
        pidfd = open_verified(info.pid, info.ticks)
        if pidfd is None:
            continue
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed += 1
        finally:
            os.close(pidfd)
    return killed


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class _ProcessGroup:
    """The running command, the group it leads, and whether its output has reached its end."""

    def __init__(self, process: anyio.abc.Process, kill_grace: float, mark: bytes) -> None:
        self.process = process
        self.pgid = process.pid  # its own session: the group id is the leader's pid
        self.kill_grace = kill_grace
        self.output_closed = anyio.Event()
        self.stopped = False
        self.mark = mark  # HIVE_STEP_ID=<value>, as it shows in /proc/PID/environ
        stat = read_stat(process.pid)  # (unreaped: its entry is there, a zombie at worst)
        self.ticks = stat.ticks if stat is not None else None

    async def stop(self) -> None:
        """Stop the whole group: SIGTERM, up to ``kill_grace`` for the command to exit and the
        output pipes to close, then SIGKILL, then reap the command. After the command exited on
        its own only its leftovers are signalled. Shielded, and bounded by its own deadlines:
        a cancellation neither cuts it short nor makes it wait longer."""
        with anyio.CancelScope(shield=True):
            process = self.process
            if self.kill_grace > 0 and (process.returncode is None or _group_alive(self.pgid)):
                _signal_group(self.pgid, signal.SIGTERM)
                with anyio.move_on_after(self.kill_grace):
                    if process.returncode is None:
                        await process.wait()
                    await self.output_closed.wait()
            _signal_group(self.pgid, signal.SIGKILL)
            if self.ticks is not None:
                with anyio.move_on_after(_REAP_SECONDS):
                    swept = await anyio.to_thread.run_sync(_sweep_escaped, self.pgid, self.ticks, self.mark)
                    if swept:
                        log.info("killed %d process(es) that left the group of step %d (setsid)", swept, self.pgid)
            if process.returncode is None:
                with anyio.move_on_after(_REAP_SECONDS):
                    await process.wait()
            self.stopped = True


def _working_dir_problem(cwd: str) -> str | None:
    if os.path.isdir(cwd):
        return None
    reason = "is not a directory" if os.path.exists(cwd) else "does not exist"
    return f"working directory {cwd} {reason}"


def _spawn_problem(exc: BaseException, executable: str, cwd: str | None) -> str:
    if isinstance(exc, OSError):
        if cwd is not None and exc.filename == cwd and exc.filename != executable:
            if isinstance(exc, FileNotFoundError):
                return f"working directory {cwd} does not exist"
            return f"cannot enter working directory {cwd}: {exc.strerror or exc}"
        return f"cannot run {executable}: {exc.strerror or exc}"
    return f"cannot start {executable}: {exc}"


async def run_step(
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    output: OutputSink | None = None,
    timeout: float | None = None,
    kill_grace: float = KILL_GRACE,
    tail_lines: int = 20,
    merge_stderr: bool = False,
) -> StepResult:
    """Run ``argv`` in ``cwd`` (None: the daemon's) with exactly ``env``, in a new session, and
    stop its whole process group when it ends (see the module docstring).

    Output lines go to ``output("stdout" | "stderr", line)`` as they come (with
    ``merge_stderr``, all of them as ``"stdout"``). ``timeout`` (None: no limit) bounds the
    command's run. Never raises except cancellation, which stops the group first."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=max(1, tail_lines))

    def result(
        *, returncode: int | None = None, timed_out: bool = False, error: str | None = None
    ) -> StepResult:
        # anyio, like subprocess, reports "killed by signal N" as -N.
        killed_by = -returncode if returncode is not None and returncode < 0 else None
        return StepResult(
            exit_code=returncode if killed_by is None else None, signal=killed_by,
            timed_out=timed_out, error=error, tail=list(tail),
            duration=time.monotonic() - started,
        )

    problem = None if cwd is None else _working_dir_problem(cwd)
    if problem is not None:
        return result(error=problem)
    step_id = secrets.token_hex(8)
    env = {**env, STEP_ID_VAR: step_id}
    try:
        # Shielded: a cancellation is seen at the next checkpoint instead, inside the
        # try/finally that stops the whole group.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
    except (OSError, ValueError) as exc:
        return result(error=_spawn_problem(exc, argv[0], cwd))

    def emit(stream: str, line: str) -> None:
        if line.strip():
            tail.append(line)
        if output is not None:
            deliver(output, stream, line)

    group = _ProcessGroup(process, kill_grace, f"{STEP_ID_VAR}={step_id}".encode())
    pipes = [(process.stdout, "stdout"), (process.stderr, "stderr")]
    open_pipes = len(pipes)

    async def pump(stream: anyio.abc.ByteReceiveStream | None, name: str) -> None:
        nonlocal open_pipes
        try:
            if stream is not None:
                await pump_lines(stream, name, emit, LINE_CAP)
        finally:
            open_pipes -= 1
            if open_pipes == 0:
                group.output_closed.set()

    returncode: int | None = None
    try:
        async with anyio.create_task_group() as pumps:
            for stream, name in pipes:
                pumps.start_soon(pump, stream, name)
            with anyio.move_on_after(timeout):
                returncode = await process.wait()
            await group.stop()
            with anyio.move_on_after(_DRAIN_SECONDS):
                await group.output_closed.wait()
            pumps.cancel_scope.cancel()  # a process outside the group still holds a pipe
    finally:
        with anyio.CancelScope(shield=True):
            if not group.stopped:
                await group.stop()
            with anyio.move_on_after(_REAP_SECONDS):
                await process.aclose()
    if returncode is None:
        return result(timed_out=True)
    return result(returncode=returncode)


async def run_shell_step(
    command: str,
    *,
    cwd: str,
    env: Mapping[str, str],
    output: OutputSink | None = None,
    shell: str | None = None,
    timeout: float | None = None,
    kill_grace: float = KILL_GRACE,
    tail_lines: int = 20,
    merge_stderr: bool = False,
) -> StepResult:
    """:func:`run_step` of ``<shell> -c command``, the shell found by :func:`resolve_shell`
    (a shell that cannot be found is a result with ``error`` set); a command that starts
    with ``#!`` runs as a script of the interpreter it names."""
    problem = _working_dir_problem(cwd)  # the first thing a step needs
    if problem is not None:
        return StepResult(error=problem)
    if is_script(command):
        return await _run_script_step(command, cwd=cwd, env=env, output=output, timeout=timeout,
                                      kill_grace=kill_grace, tail_lines=tail_lines, merge_stderr=merge_stderr)
    executable, problem = resolve_shell(shell, env)
    if executable is None:
        return StepResult(error=problem)
    return await run_step(
        [executable, "-c", command], cwd=cwd, env=env, output=output, timeout=timeout,
        kill_grace=kill_grace, tail_lines=tail_lines, merge_stderr=merge_stderr,
    )


async def _run_script_step(
    command: str, *, cwd: str, env: Mapping[str, str], output: OutputSink | None,
    timeout: float | None, kill_grace: float, tail_lines: int, merge_stderr: bool,
) -> StepResult:
    """A step that starts with ``#!``: written to a file of its own (0700, removed after the
    step) and executed, so the interpreter it names runs it, as a service's ``run`` does."""
    try:
        check_interpreter(command, cwd)
    except RunnerError as exc:
        return StepResult(error=str(exc))
    fd, path = tempfile.mkstemp(prefix="hive-step-", suffix=".script")
    try:
        try:
            data = (command if command.endswith("\n") else command + "\n").encode()
            while data:
                data = data[os.write(fd, data):]
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return await run_step([path], cwd=cwd, env=env, output=output, timeout=timeout,
                              kill_grace=kill_grace, tail_lines=tail_lines, merge_stderr=merge_stderr)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
