"""Lifecycle hooks (``hive.yaml`` §13, spec S).

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
  way, shielded, before it propagates. A process that left the group (``setsid``) is killed
  with it, found by the step's ``HIVE_STEP_ID``. The process plumbing is :mod:`hive.daemon._shell_step`, shared with builds and ``cmd``
  health checks; this module is the policy around it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import msgspec

from hive.config import HookStep
from hive.daemon._shell_step import (
    KILL_GRACE,
    LINE_CAP,
    OutputSink,
    StepResult,
    cut_line,
    deliver,
    run_shell_step,
    short_command,
)
from hive.daemon.health import format_seconds
from runners.base import describe_exit

__all__ = [
    "DEFAULT_HOOK_TIMEOUT",
    "KILL_GRACE",
    "LINE_CAP",
    "ContainerStepRunner",
    "HookOutcome",
    "OutputSink",
    "run_hooks",
]

log = logging.getLogger("hive.hooks")

DEFAULT_HOOK_TIMEOUT = 60.0


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


def _shell_failure(label: str, result: StepResult, timeout: float) -> _Failure | None:
    if result.error is not None:
        return _Failure(label, result.error)
    if result.timed_out:
        return _timed_out(label, timeout)
    if result.ok:
        return None
    reason = describe_exit(result.exit_code, result.signal)
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
