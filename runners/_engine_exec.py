"""A command run inside a running container through the engine's exec endpoints (cmd
health checks): no ``docker exec`` / ``podman exec`` process.

``POST /containers/{id}/exec`` makes the exec (``sh -c COMMAND``, stdout and stderr
attached, no stdin, no TTY: the engine's environment of the container, its user, its
working directory, as ``docker exec`` gives them), ``POST /exec/{id}/start`` runs it and
streams its output until it ends, in frames (an 8-byte header: stream 1 stdout or 2
stderr, then the size, big-endian, in bytes 4-7; then the payload), and
``GET /exec/{id}/json`` says its ``ExitCode``. Only the last non-blank line is kept (what
a check's message quotes), each line cut at :data:`LINE_CAP` bytes as a host check's are.

**A command that outlives its timeout.** The API has no way to stop an exec, and an
engine lets one run on when its output's connection closes (so did ``docker exec``
killed at the timeout, before this module: the process stayed in the container). A
check that hangs (a ``curl`` with no timeout of its own) would then leave one more
process in the container at every interval, until its pids or memory run out. So the
exec is killed, as Docker's own ``HEALTHCHECK`` kills its probes: the engine names the
exec's process by its host pid (``Pid`` of ``GET /exec/{id}/json``); its tree is read
from the host's ``/proc`` (each process's pid in the container's namespace, ``NSpid``),
and a second exec, ``kill -KILL PID...`` in the container, as the same user, ends them
all. Done from inside, it needs no right over the container's processes on the host
(a rootful engine's, while Hive runs as a user). What escaped the tree (a double fork
now a child of the container's init) is left, as a host check's process that left its
group without its ``HIVE_STEP_ID`` is. The same happens when the check is cancelled
(the service stops) while its command runs, within :data:`KILL_DEADLINE`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import psutil

from ._engine_api import EngineApi
from .base import CheckRun, RunnerError
from .output import Lines

__all__ = ["LINE_CAP", "run_check"]

# Longer output lines are cut here (as a host check's: hive.daemon._shell_step.LINE_CAP).
LINE_CAP = 64 * 1024
# How long killing a timed-out (or cancelled) check's processes may take.
KILL_DEADLINE = 5.0


class _LastLine:
    """The last non-blank line of an exec's output; stdout and stderr each cut in lines
    of their own (a line is never made of both)."""

    def __init__(self) -> None:
        self.line = ""
        self.streams = {1: Lines("stdout", self._emit, LINE_CAP), 2: Lines("stderr", self._emit, LINE_CAP)}

    def _emit(self, _stream: str, line: str) -> None:
        if line.strip():
            self.line = line

    def feed(self, pending: bytearray) -> None:
        """Take the complete frames at the start of ``pending`` out of it."""
        while len(pending) >= 8:
            size = int.from_bytes(pending[4:8], "big")
            if len(pending) < 8 + size:
                return
            lines = self.streams.get(pending[0])
            if lines is not None:  # (0 would be stdin: not attached)
                lines.feed(bytes(pending[8:8 + size]))
            del pending[:8 + size]

    def end(self) -> str:
        for lines in self.streams.values():
            lines.end()
        return self.line


async def run_check(api: EngineApi, container_id: str, command: str, timeout: float) -> CheckRun:
    """Run ``sh -c command`` in the container, bounded by ``timeout`` (the exec's making,
    its run and its exit code's reading together). RunnerError if the engine cannot be
    reached or refuses (the container is not running)."""
    output = _LastLine()
    running: str | None = None  # the exec started and not seen ending
    try:
        with anyio.move_on_after(timeout):
            made = await api.request("POST", f"/containers/{container_id}/exec", body={
                "Cmd": ["sh", "-c", command], "AttachStdin": False, "AttachStdout": True,
                "AttachStderr": True, "Tty": False,
            })
            exec_id = _id_of(made)
            if not exec_id:
                raise RunnerError(f"the {api.display} engine made no exec (answer: {made!r})")
            running = exec_id
            pending = bytearray()
            async with api.stream(f"/exec/{exec_id}/start", method="POST",
                                  body={"Detach": False, "Tty": False}) as response:
                async for chunk in response.aiter_raw():
                    pending += chunk
                    output.feed(pending)
            last = output.end()
            code = await _exit_code(api, exec_id)
            running = None
            return CheckRun(exit_code=code, output=last)
        return CheckRun(exit_code=None, output=output.end())  # timed out
    finally:
        if running is not None:  # timed out, cancelled or cut off while it ran: end it
            with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_DEADLINE):
                await _kill(api, container_id, running)


async def _exit_code(api: EngineApi, exec_id: str) -> int | None:
    """The ended exec's exit code. The stream's end is the process's: podman may tell
    that a moment before its inspection does (``Running`` still true), so ask again then."""
    delay = 0.005
    while True:
        found = await api.request("GET", f"/exec/{exec_id}/json") or {}
        code = found.get("ExitCode")
        if not found.get("Running") and isinstance(code, int):
            return code
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def _kill(api: EngineApi, container_id: str, exec_id: str) -> None:
    """SIGKILL the exec's process and its descendants, from inside the container (see the
    module docstring); nothing if it has ended or the engine does not answer."""
    with contextlib.suppress(RunnerError):
        found: dict[str, Any] = await api.request("GET", f"/exec/{exec_id}/json") or {}
        pid = found.get("Pid")
        if not found.get("Running") or not isinstance(pid, int) or pid <= 0:
            return
        inside = _namespace_pids(pid)
        if not inside:
            return
        made = await api.request("POST", f"/containers/{container_id}/exec", body={
            "Cmd": ["sh", "-c", 'kill -KILL "$@" 2>/dev/null', "kill", *map(str, inside)],
            "AttachStdout": True, "AttachStderr": True,
        })
        killer = _id_of(made)
        if killer:  # read to its end: the processes are gone when this returns
            async with api.stream(f"/exec/{killer}/start", method="POST",
                                  body={"Detach": False, "Tty": False}) as response:
                async for _ in response.aiter_raw():
                    pass


def _id_of(made: Any) -> str:
    """The ``Id`` of an exec the engine made ('' if its answer has none)."""
    return str(made.get("Id") or "") if isinstance(made, dict) else ""


def _namespace_pids(host_pid: int) -> list[int]:
    """The container-side pids of ``host_pid`` and its descendants (``NSpid``'s last
    field in ``/proc/PID/status``), the parent first; those that ended are left out."""
    pids = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(host_pid)
        for process in [root, *root.children(recursive=True)]:
            inside = _namespace_pid(process.pid)
            if inside is not None and inside > 1:  # never the container's init
                pids.append(inside)
    return pids


def _namespace_pid(host_pid: int) -> int | None:
    try:
        with open(f"/proc/{host_pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None
