"""Lifecycle hooks (``hive.yaml`` §13, spec S), and the shell-step plumbing builds share.

:func:`run_hooks` runs one event's steps (``pre-up``, ``post-up``, ``pre-down``, ``post-down``)
and answers a :class:`HookOutcome`; it never raises for a failing hook, only cancellation
propagates.

* Top-level steps run one after the other. A failure is handled by the step's ``on_failure``:
  ``abort`` stops the event (the remaining steps are skipped), ``warn`` logs it, records it in
  ``HookOutcome.warnings`` and carries on, ``retry`` makes up to ``retries + 1`` attempts,
  ``retry_delay`` apart, and fails the event when all of them fail.
* ``timeout`` bounds each attempt (a non-positive value means the default, 60 s). When it
  expires the step's whole process group gets SIGTERM, then SIGKILL after a short grace, and the
  step fails with ``Hook timed out after 60s``.
* ``run`` steps and ``runner: {type: script}`` steps run ``<shell> -c <command>`` in their own
  session. Other runner types go to the daemon's ``run_container`` callback (the runner's
  ``run_once``: ``docker run --rm`` …); without one the step fails with ``runner hook type
  'docker' is not available``.
* ``parallel`` groups start their children together; the group's ``timeout`` bounds the whole
  group. Under ``abort`` the first child that fails fails the group and the others are cancelled
  (their process groups are killed); under ``warn`` every child runs to the end and failures are
  warnings. A child's own ``on_failure`` still applies to the child (a ``warn`` child never fails
  an ``abort`` group; a ``retry`` child retries on its own).
* Environment: the caller's ``env`` is the complete base (process < service < ``HIVE_*``);
  ``HIVE_HOOK_EVENT`` is set on top of it, and each step's ``environment`` on top of that (a
  group's ``environment`` is seen by its children, below their own).
* Every line a step prints goes to ``output(stream, line)``; Hive's own lines about the steps go
  to ``output("hive", ...)``.
* Nothing a hook starts outlives the step: when the step's shell exits, whatever is left in its
  process group is stopped too (SIGTERM, then SIGKILL). Cancellation stops running steps the same
  way, shielded, before it propagates. A process that left the group (``setsid``) is out of
  reach.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.abc
import msgspec

from hive.config import HookStep
from hive.daemon.health import format_seconds
from runners.output import pump_lines

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "KILL_GRACE",
    "LINE_CAP",
    "POSIX_SHELLS",
    "ContainerStepRunner",
    "HookOutcome",
    "OutputSink",
    "ShellResult",
    "cut_line",
    "deliver",
    "describe_exit",
    "resolve_shell",
    "run_hooks",
    "run_shell_step",
    "short_command",
    "signal_name",
]

log = logging.getLogger("hive.hooks")

OutputSink = Callable[[str, str], None]
"""``(stream, text)``: ``stream`` is ``"stdout"``, ``"stderr"`` or ``"hive"``; ``text`` is one
line without its newline."""

POSIX_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
DEFAULT_SHELL = "/bin/sh"
DEFAULT_HOOK_TIMEOUT = 60.0
# Between SIGTERM and SIGKILL when a step is stopped (timeout, cancellation, leftovers).
KILL_GRACE = 2.0
# Longer output lines are cut here (the rest of the line is dropped).
LINE_CAP = 64 * 1024
# How long the output of a finished step may take to reach EOF (a process outside the step's
# group may still hold the pipe).
_DRAIN_SECONDS = 1.0
# How long reaping a SIGKILLed process may take before we give up on it.
_REAP_SECONDS = 5.0
# Output lines in failure messages are cut to this many characters.
_MESSAGE_LINE_CAP = 200
_COMMAND_CAP = 80


# ---- running one shell command ---------------------------------------------------------------


class ShellResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`run_shell_step` observed.

    ``exit_code`` is the shell's exit status when it ended on its own (negative: killed by that
    signal), else None (it could not start, or it timed out). ``error`` says why it could not
    start. ``tail`` holds the last non-blank output lines of both streams, in arrival order."""

    exit_code: int | None = None
    timed_out: bool = False
    error: str | None = None
    tail: list[str] = []
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


def describe_exit(code: int) -> str:
    """``3`` → ``exited with code 3``; ``-9`` → ``was killed by SIGKILL``."""
    if code < 0:
        return f"was killed by {signal_name(-code)}"
    return f"exited with code {code}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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


def deliver(output: OutputSink, stream: str, text: str) -> None:
    """Hand one line to the sink; a failing sink is the caller's bug, never the step's."""
    try:
        output(stream, text)
    except Exception:
        log.exception("hook output sink failed")


def cut_line(line: str, cap: int = _MESSAGE_LINE_CAP) -> str:
    return line if len(line) <= cap else line[: cap - 1] + "…"


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


@dataclass
class _Child:
    """One running shell and the end of its output."""

    process: anyio.abc.Process
    readers_done: anyio.Event
    grace: float
    stopped: bool = False

    async def stop(self) -> None:
        """Stop the whole process group: SIGTERM, up to ``grace`` for it to end (the shell and
        the output pipes), then SIGKILL, then reap. After a normal exit only leftovers in the
        group are signalled."""
        process = self.process
        pgid = process.pid  # its own session: the group id is the leader's pid
        if process.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
            with anyio.move_on_after(self.grace):
                await process.wait()
                await self.readers_done.wait()
        elif _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            with anyio.move_on_after(self.grace):
                await self.readers_done.wait()
        _signal_group(pgid, signal.SIGKILL)
        if process.returncode is None:
            with anyio.move_on_after(_REAP_SECONDS):
                await process.wait()
        self.stopped = True


def _spawn_problem(exc: BaseException, executable: str, cwd: str) -> str:
    if isinstance(exc, OSError):
        if exc.filename == cwd and exc.filename != executable:
            if isinstance(exc, FileNotFoundError):
                return f"working directory {cwd} does not exist"
            return f"cannot enter working directory {cwd}: {exc.strerror or exc}"
        return f"cannot run {executable}: {exc.strerror or exc}"
    return f"cannot start {executable}: {exc}"


async def run_shell_step(
    command: str,
    *,
    cwd: str,
    env: Mapping[str, str],
    output: OutputSink,
    shell: str | None = None,
    timeout: float | None = None,
    tail_lines: int = 20,
    kill_grace: float = KILL_GRACE,
) -> ShellResult:
    """Run ``<shell> -c command`` in ``cwd`` with exactly ``env``, in a new session.

    Output lines go to ``output("stdout" | "stderr", line)`` as they come. When the shell exits,
    whatever it left in its process group is stopped; on ``timeout`` (None: no limit) or
    cancellation the whole group is stopped (SIGTERM, ``kill_grace``, SIGKILL) before this
    returns or re-raises. Never raises except cancellation: a missing working directory or shell
    is a result with ``error`` set."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=max(1, tail_lines))

    def result(
        *, exit_code: int | None = None, timed_out: bool = False, error: str | None = None
    ) -> ShellResult:
        return ShellResult(exit_code=exit_code, timed_out=timed_out, error=error,
                           tail=list(tail), duration=time.monotonic() - started)

    if not os.path.isdir(cwd):
        reason = "is not a directory" if os.path.exists(cwd) else "does not exist"
        return result(error=f"working directory {cwd} {reason}")
    executable, problem = resolve_shell(shell, env)
    if executable is None:
        return result(error=problem)
    try:
        # Shielded: cancelled half-way, asyncio would kill only the shell and leave whatever it
        # has started already running. A cancellation is seen at the next checkpoint instead,
        # inside the try/finally that stops the whole group.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                [executable, "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
    except (OSError, ValueError) as exc:
        return result(error=_spawn_problem(exc, executable, cwd))

    def emit(stream: str, line: str) -> None:
        if line.strip():
            tail.append(line)
        deliver(output, stream, line)

    child = _Child(process, anyio.Event(), kill_grace)
    open_readers = 2

    async def pump(stream: anyio.abc.ByteReceiveStream | None, name: str) -> None:
        nonlocal open_readers
        try:
            if stream is not None:
                await pump_lines(stream, name, emit, LINE_CAP)
        finally:
            open_readers -= 1
            if open_readers == 0:
                child.readers_done.set()

    exit_code: int | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, process.stdout, "stdout")
            tg.start_soon(pump, process.stderr, "stderr")
            with anyio.move_on_after(timeout):
                exit_code = await process.wait()
            await child.stop()
            with anyio.move_on_after(_DRAIN_SECONDS):
                await child.readers_done.wait()
            tg.cancel_scope.cancel()  # a process outside the group still holds a pipe
    finally:
        with anyio.CancelScope(shield=True):
            if not child.stopped:
                await child.stop()
            with anyio.move_on_after(_REAP_SECONDS):
                await process.aclose()
    if exit_code is None:
        return result(timed_out=True)
    return result(exit_code=exit_code)


# ---- hooks -----------------------------------------------------------------------------------


class HookOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one event's hooks. ``ok`` is False when the event failed (an ``abort``
    failure, or a ``retry`` step out of attempts); ``message`` then says why, e.g.
    ``pre-up hook failed: step 2 (`./migrate.sh`) exited with code 3: <last output line>``.
    ``warnings`` lists the failures of ``warn`` steps."""

    ok: bool
    message: str = ""
    warnings: list[str] = []


class ContainerStepRunner(Protocol):
    """Runs a ``runner:`` hook step of a type other than ``script`` (docker, podman, …) to its
    end and returns its exit code. It receives the step's full environment (HIVE_* and the
    step's ``environment`` included), the output sink for the container's lines, and the
    attempt's timeout in seconds. :func:`run_hooks` also enforces the timeout by cancelling
    the call, so the runner must remove its container when cancelled. An exception is a failed
    step (its text is the reason)."""

    async def __call__(
        self, step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float
    ) -> int: ...


@dataclass
class _Failure:
    label: str  # "step 2 (`./migrate.sh`)"
    reason: str  # "exited with code 3: boom" or "Hook timed out after 60s"
    continues: bool = False  # the reason reads on from the label, without a colon

    def __str__(self) -> str:
        return f"{self.label} {self.reason}" if self.continues else f"{self.label}: {self.reason}"


def short_command(command: str) -> str:
    lines = [line.strip() for line in command.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if len(lines) > 1 or len(text) > _COMMAND_CAP:
        return text[: _COMMAND_CAP - 1] + "…"
    return text


def _summary(step: HookStep) -> str:
    """What a step does, for log lines."""
    if step.kind == "run":
        return short_command(step.run or "")
    if step.kind == "runner" and step.runner is not None:
        runner = step.runner
        if runner.type == "script" and runner.script is not None:
            return short_command(runner.script.run)
        image = runner.config.get("image")
        suffix = f" {image}" if isinstance(image, str) and image else ""
        return f"{runner.type} runner{suffix}"
    count = len(step.parallel)
    return f"{count} step{'' if count == 1 else 's'} in parallel"


def _label(number: str, step: HookStep) -> str:
    if step.kind == "run" or (
        step.kind == "runner" and step.runner is not None and step.runner.type == "script"
    ):
        return f"step {number} (`{_summary(step)}`)"
    if step.kind == "parallel":
        return f"step {number} (parallel group)"
    return f"step {number} ({_summary(step)})"


def _timeout_of(step: HookStep) -> float:
    return step.timeout if step.timeout > 0 and math.isfinite(step.timeout) else DEFAULT_HOOK_TIMEOUT


def _timed_out(label: str, timeout: float) -> _Failure:
    return _Failure(label, f"Hook timed out after {format_seconds(timeout)}")


def _shell_failure(label: str, result: ShellResult, timeout: float) -> _Failure | None:
    if result.error is not None:
        return _Failure(label, result.error)
    if result.timed_out:
        return _timed_out(label, timeout)
    if result.exit_code == 0 or result.exit_code is None:
        return None
    reason = describe_exit(result.exit_code)
    if result.tail:
        reason += f": {cut_line(result.tail[-1].strip())}"
    return _Failure(label, reason, continues=True)


class _HookRun:
    """The state of one :func:`run_hooks` call."""

    def __init__(
        self,
        event: str,
        output: OutputSink,
        shell: str | None,
        run_container: ContainerStepRunner | None,
    ) -> None:
        self.event = event
        self.output = output
        self.shell = shell
        self.run_container = run_container
        self.warnings: list[str] = []

    def say(self, text: str) -> None:
        deliver(self.output, "hive", f"{self.event} hook: {text}")

    def warn(self, failure: _Failure) -> None:
        self.warnings.append(f"{self.event} hook: {failure}")
        self.say(f"{failure}; continuing (on_failure: warn)")

    async def step(self, step: HookStep, number: str, env: Mapping[str, str]) -> _Failure | None:
        """One step under its ``on_failure``: None when the sequence may go on (success, or a
        warning recorded), else the failure that ends it."""
        failure = await self._attempts(step, number, env)
        if failure is None:
            return None
        if step.on_failure == "warn":
            self.warn(failure)
            return None
        return failure

    async def _attempts(
        self, step: HookStep, number: str, env: Mapping[str, str]
    ) -> _Failure | None:
        label = _label(number, step)
        attempts = max(1, step.retries + 1) if step.on_failure == "retry" else 1
        failure: _Failure | None = None
        for attempt in range(1, attempts + 1):
            counter = f" (attempt {attempt} of {attempts})" if attempts > 1 else ""
            self.say(f"running step {number}{counter}: {_summary(step)}")
            failure = await self._attempt(step, number, label, env)
            if failure is None:
                if attempt > 1:
                    self.say(f"step {number} succeeded on attempt {attempt} of {attempts}")
                return None
            if attempt < attempts:
                delay = max(0.0, step.retry_delay)
                self.say(f"{failure}; retrying in {format_seconds(delay)}")
                await anyio.sleep(delay)
            elif attempts > 1:
                failure.reason += f" (after {attempts} attempts)"
        return failure

    async def _attempt(
        self, step: HookStep, number: str, label: str, env: Mapping[str, str]
    ) -> _Failure | None:
        step_env = {**env, **step.environment}
        timeout = _timeout_of(step)
        if step.kind == "run" and step.run is not None:
            result = await run_shell_step(
                step.run, cwd=step.working_dir, env=step_env, output=self.output,
                shell=self.shell, timeout=timeout,
            )
            failure = _shell_failure(label, result, timeout)
        elif step.kind == "runner" and step.runner is not None:
            failure = await self._runner_step(step, label, step_env, timeout)
        elif step.kind == "parallel":
            return await self._parallel(step, number, label, step_env, timeout)
        else:
            failure = _Failure(label, f"invalid hook step (kind {step.kind!r} without its field)")
        if failure is not None and failure.reason.startswith("Hook timed out"):
            self.say(f"step {number} timed out after {format_seconds(timeout)} and was stopped")
        return failure

    async def _runner_step(
        self, step: HookStep, label: str, env: Mapping[str, str], timeout: float
    ) -> _Failure | None:
        runner = step.runner
        assert runner is not None
        if runner.type == "script":
            script = runner.script
            if script is None:
                return _Failure(label, "script runner hook has no 'run'")
            # The block's own working_dir when it sets one, else the step's (service dir).
            cwd = script.working_dir if "working_dir" in runner.config else step.working_dir
            result = await run_shell_step(
                script.run, cwd=cwd, env=env, output=self.output,
                shell=script.shell or self.shell, timeout=timeout,
            )
            return _shell_failure(label, result, timeout)
        if self.run_container is None:
            return _Failure(label, f"runner hook type '{runner.type}' is not available")
        code: int | None = None
        last: list[str] = []  # the step's last line: the failure quotes it, as for a shell step

        def output(stream: str, text: str) -> None:
            if stream != "hive" and text.strip():
                last[:] = [text.strip()]
            self.output(stream, text)

        with anyio.move_on_after(timeout):
            try:
                code = await self.run_container(step, env, output, timeout)
            except Exception as exc:
                log.warning("%s hook %s failed", self.event, label, exc_info=True)
                return _Failure(label, f"{runner.type} hook failed: {exc or type(exc).__name__}")
        if code is None:
            return _timed_out(label, timeout)
        if code != 0:
            reason = describe_exit(code) + (f": {cut_line(last[0])}" if last else "")
            return _Failure(label, reason, continues=True)
        return None

    async def _parallel(
        self, group: HookStep, number: str, label: str, env: Mapping[str, str], timeout: float
    ) -> _Failure | None:
        abort = group.on_failure != "warn"
        first: _Failure | None = None
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as tg:

                async def child(index: int, step: HookStep) -> None:
                    nonlocal first
                    failure = await self.step(step, f"{number}.{index}", env)
                    if failure is None:
                        return
                    if not abort:
                        self.warn(failure)
                    elif first is None:
                        first = failure
                        if len(group.parallel) > 1:
                            self.say(f"{failure}; stopping the other steps of step {number}")
                        tg.cancel_scope.cancel()

                for index, step in enumerate(group.parallel, 1):
                    tg.start_soon(child, index, step)
        if first is not None:
            return first
        if deadline.cancelled_caught:
            self.say(f"step {number} timed out after {format_seconds(timeout)} and was stopped")
            return _timed_out(label, timeout)
        return None


async def run_hooks(
    event: str,
    steps: Sequence[HookStep],
    *,
    env: Mapping[str, str],
    output: OutputSink,
    shell: str | None = None,
    run_container: ContainerStepRunner | None = None,
) -> HookOutcome:
    """Run one event's hook steps (see the module docstring). ``env`` is the complete base
    environment; ``HIVE_HOOK_EVENT=event`` is added here. ``shell`` is the service's shell for
    ``run`` steps (else ``$SHELL`` from ``env`` if POSIX, else ``/bin/sh``). Never raises for a
    failing hook; cancellation stops the running steps' process groups and propagates."""
    run = _HookRun(event, output, shell, run_container)
    base = dict(env)
    base["HIVE_HOOK_EVENT"] = event
    for index, step in enumerate(steps, 1):
        failure = await run.step(step, str(index), base)
        if failure is None:
            continue
        message = f"{event} hook failed: {failure}"
        deliver(output, "hive", message)
        skipped = len(steps) - index
        if skipped:
            run.say(f"skipping the remaining {skipped} step{'' if skipped == 1 else 's'}")
        return HookOutcome(ok=False, message=message, warnings=list(run.warnings))
    return HookOutcome(ok=True, warnings=list(run.warnings))
