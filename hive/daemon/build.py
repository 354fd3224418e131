"""A service's ``build`` step (``hive.yaml`` §9, spec S).

The build runs after the pre-up hooks and before the runner: ``<shell> -c command`` in the
build's ``working_dir`` with the service's environment, in its own session (the process
plumbing, shared with hooks and ``cmd`` health checks, is :mod:`hive.daemon._shell_step`). Whether it runs at all is
:func:`build_needed`: ``when: never`` skips it, ``always`` runs it on every start, ``missing``
(the default) runs it unless ``output`` is set and exists — without ``output``, ``missing``
always builds. A failure is a :class:`BuildResult` whose message reads
``Build failed for service p:web: exit code 2: <last output lines>``; the caller marks the
service crashed and fails the start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from hive.config import BuildSpec
from hive.daemon._shell_step import (
    KILL_GRACE,
    OutputSink,
    cut_line,
    deliver,
    run_shell_step,
    short_command,
)
from hive.daemon.health import format_seconds
from runners.base import describe_exit

__all__ = ["TAIL_LINES", "BuildResult", "build_needed", "run_build"]

# Output lines kept in BuildResult.tail, and how many of them go into a failure message.
TAIL_LINES = 20
_MESSAGE_LINES = 5


def build_needed(build: BuildSpec, *, force: bool = False) -> bool:
    """Whether a start must run the build. ``force`` (``hive service build FQN``) always does."""
    if force:
        return True
    if build.when == "never":
        return False
    if build.when == "always":
        return True
    return build.output is None or not os.path.exists(build.output)


class BuildResult(msgspec.Struct, frozen=True, kw_only=True):
    """``exit_code`` is None when the build could not start or timed out, negative when a signal
    killed it (``-9``: SIGKILL). ``tail`` holds the last non-blank output lines (both streams,
    in arrival order)."""

    ok: bool
    exit_code: int | None
    message: str
    tail: list[str]


async def run_build(
    build: BuildSpec,
    *,
    fqn: str,
    env: Mapping[str, str],
    output: OutputSink,
    shell: str | None = None,
    timeout: float | None = None,
) -> BuildResult:
    """Run the build now (the caller checked :func:`build_needed`). Output lines go to
    ``output``, Hive's own lines about the build to ``output("hive", ...)``. ``timeout`` (None:
    none) stops the build's whole process group. Never raises except cancellation, which
    stops the build's process group first."""
    deliver(output, "hive", f"build: running `{short_command(build.command)}` in "
                             f"{build.working_dir}")
    result = await run_shell_step(
        build.command, cwd=build.working_dir, env=env, output=output, shell=shell,
        timeout=timeout, tail_lines=TAIL_LINES, kill_grace=KILL_GRACE,
    )
    took = format_seconds(round(result.duration, 1) if result.duration >= 1 else result.duration)
    if result.ok:
        deliver(output, "hive", f"build: succeeded in {took}")
        if build.output is not None and not os.path.exists(build.output):
            deliver(output, "hive", f"build: succeeded but did not create {build.output}; "
                                     "it will run again on the next start")
        return BuildResult(ok=True, exit_code=0, message=f"Build succeeded for service {fqn}",
                           tail=result.tail)
    if result.error is not None:
        reason = result.error
    elif result.timed_out:
        assert timeout is not None
        reason = f"timed out after {format_seconds(timeout)}"
    else:
        reason = describe_exit(result.exit_code, result.signal, code_phrase="exit code")
    lines = [cut_line(line.strip()) for line in result.tail[-_MESSAGE_LINES:]]
    if lines:
        reason += ": " + " | ".join(lines)
    message = f"Build failed for service {fqn}: {reason}"
    deliver(output, "hive", message)
    exit_code = -result.signal if result.signal is not None else result.exit_code
    return BuildResult(ok=False, exit_code=exit_code, message=message, tail=result.tail)
