"""One running container, supervised through the engine's API and the engine's thread
(:mod:`runners._engine_watch`: one event stream per engine, one log stream per container):
no helper process.

- **Exit** comes from the event stream: ``ExitStatus(exit_code=...)``, as the engine
  reports it (a main process killed by signal N is 128+N). Before ``wait()`` returns, the
  output copy is given a moment to copy the last lines. A container that exited by itself
  is left for post-mortem inspection; the next start (or ``stop()``) removes it.
- **Output**: the container's stdout and stderr are appended to ``spec.stdout_path`` and
  ``spec.stderr_path``; after an adoption, from the capture files' last write on (what it
  printed while nothing copied is copied then).
- **Cmd health checks** run in the container through the engine's exec endpoints
  (:mod:`runners._engine_exec`): no ``docker exec`` process.
- **Stop.** The container is created with the spec's stop signal, so a stop with that
  signal is ``POST /containers/{id}/stop?t=GRACE`` (the engine sends it, then SIGKILL
  after the grace). A stop with another signal sends it with ``/kill``, waits the grace
  on the exit, then kills with SIGKILL. Then ``DELETE /containers/{id}?force=1&v=1``
  (anonymous volumes go with it; named volumes stay).
- **The engine going away**: the event stream's end tells every handle at once; each
  then waits for the engine's thread to connect again (it tries after 0.1 s, doubling up
  to 0.5 s) and asks what is there. A container that ended meanwhile is a failure, even
  with code 0; one that survived (live-restore) is followed again. An exit the engine's
  shutdown caused (``systemctl restart docker`` stops the containers, then closes its
  API) is a failure too, told once the engine is back: a restart tried meanwhile could
  only fail and be counted. A stop that could not be sent is carried out on the engine's
  return, and a container that ended meanwhile is removed then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import psutil

from ._container import KILL_TIMEOUT
from ._engine_api import EngineUnreachable
from ._engine_exec import run_check
from ._engine_watch import Copy, Watched
from ._watch import SharedWatch
from .base import (
    CheckExec,
    CheckRun,
    ExitStatus,
    RunnerError,
    RunSpec,
    ServiceHandle,
    describe_exit,
    valid_stop_signal,
)

if TYPE_CHECKING:
    from ._container_runner import ContainerRunner

__all__ = ["ContainerHandle"]

# How long the output copy gets to copy the last lines after the container ended.
DRAIN_TIMEOUT = 5.0
# How long an engine's shutdown may take to end its event stream once it stopped a
# container (dockerd's own limit is its --shutdown-timeout, 15 s, after the containers').
SHUTDOWN_LIMIT = 120.0

log = logging.getLogger("hive.runners.container")


class ContainerHandle(ServiceHandle):
    """One running container. ``container_id`` is its full id."""

    container_id: str

    def __init__(
        self, *, runner: ContainerRunner, spec: RunSpec, container_id: str, name: str,
        config_hash: str, run_signal: int, adopted: bool = False, socket: str | None = None,
    ) -> None:
        self.runner = runner
        self.container_id = container_id
        self.name = name
        self.config_hash = config_hash
        self.run_signal = run_signal
        self.adopted = adopted
        self._spec = msgspec.structs.replace(spec, env={}) if spec.env else spec
        self._socket = socket  # the block's engine socket (None: the runner's setting)
        self._status: ExitStatus | None = None
        self._exit: ExitStatus | None = None  # known before the output is drained
        self._watch = SharedWatch()
        self._stop_done: anyio.Event | None = None
        self._stop_failed = False  # the last stop could not be sent (its engine was away)
        self._stop_asked: tuple[int, float] | None = None  # (signal, grace) of a stop
        self._watched: Watched | None = None
        self._copy: Copy | None = None

    def __repr__(self) -> str:
        state = self._status.describe() if self._status is not None else "running"
        return f"<ContainerHandle {self._spec.fqn} {self.runner.name} {self.container_id[:12]} {state}>"

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    def record(self) -> dict[str, Any]:
        """``engine``, ``container_id``, ``name``, ``config_hash``, ``stop_signal`` (the one
        the container was created with) and ``socket`` (the engine's, when not the
        default: what reaches it once the service is gone). ``logs_pid`` is always None
        (the key stays: a record's shape does not change; see :meth:`reuse_follower`)."""
        return {
            "engine": self.runner.name,
            "container_id": self.container_id,
            "name": self.name,
            "socket": self.runner.socket_of(self._socket),
            "config_hash": self.config_hash,
            "stop_signal": self.run_signal,
            "logs_pid": None,
        }

    def watched(self) -> Watched:
        """The container's state as the engine's thread tells it (registered on first use;
        an adopted container is checked at once: it may have ended meanwhile)."""
        if self._watched is None:
            self._watched = Watched()
            self._watched.report = self._report
            self.runner.watch(self._socket).watch(self.container_id, self._watched, check=self.may_have_ended())
        return self._watched

    def may_have_ended(self) -> bool:
        """Whether the container may have ended before it is watched (the engine's thread
        then asks once): an adopted one may have."""
        return self.adopted

    def forget(self) -> None:
        if self._watched is not None:
            self.runner.watch(self._socket).forget(self.container_id)

    async def usage(self) -> tuple[float, int] | None:
        """(CPU seconds, memory bytes) from the engine's one-shot stats, for a container
        whose processes the host cannot see; None if the engine has no answer."""
        try:
            stats = await self.runner.api(self._socket).request(
                "GET", f"/containers/{self.container_id}/stats", params={"stream": "false", "one-shot": "true"})
        except RunnerError:
            return None
        return _usage_of(stats)

    async def outdated(self) -> str | None:
        """The image the container's tag names now is not the one it was created from
        (rebuilt, or pulled again, under the same tag)."""
        found = await self.runner.inspect([self.container_id], self._socket)
        if not found or not (found[0].get("State") or {}).get("Running"):
            return None
        ref = str((found[0].get("Config") or {}).get("Image") or "")
        running = str(found[0].get("Image") or "").removeprefix("sha256:")
        current = await self.runner.image_id(ref, self._socket) if ref and running else None
        if current is None or current == running:
            return None
        return f"image {ref} was rebuilt (now {current[:12]}, the container runs {running[:12]})"

    def check_exec(self) -> CheckExec:
        return self.exec_check

    async def exec_check(self, command: str, timeout: float) -> CheckRun:
        """``sh -c command`` run in the container through the engine's exec endpoints
        (:mod:`runners._engine_exec`; a timed-out one is killed); RunnerError when the
        engine cannot be reached or refuses."""
        return await run_check(self.runner.api(self._socket), self.container_id, command, timeout)

    # --- output ---------------------------------------------------------------------

    async def follow_logs(self, since: float | None) -> None:
        """Copy the output from ``since`` on (None: all of it); never from later than the
        capture files' last write: what the container printed while nothing copied (the
        daemon was down, the engine away) is copied now. The mtime is the kernel's coarse
        clock (a few ms behind): the last line copied before may come again, none is lost."""
        spec = self._spec
        if not spec.stdout_path and not spec.stderr_path:
            return
        written = _last_writes(spec.stdout_path, spec.stderr_path)
        if since is not None and written:
            since = min(since, max(written))  # the last line copied, to stdout or stderr
        self._copy = self.runner.watch(self._socket).follow(
            self.container_id, self.watched(), spec.stdout_path, spec.stderr_path, since)

    def reuse_follower(self, pid: Any) -> bool:
        """A ``logs -f`` a daemon of the former CLI runner left: ended (its output is
        copied through the API from now on, not twice). Never reused: False."""
        if isinstance(pid, int) and pid > 0:
            with contextlib.suppress(psutil.Error, OSError):
                process = psutil.Process(pid)
                if "logs" in process.cmdline() and self.container_id in process.cmdline():
                    process.kill()
        return False

    async def _drain_logs(self) -> None:
        watched = self.watched()
        if self._copy is not None and watched.exited:
            self._copy.finish()
        with anyio.move_on_after(DRAIN_TIMEOUT):
            while watched.following:
                await watched.changed()

    async def close_logs(self) -> None:
        if self._copy is not None:
            self._copy.cancel()
            self._copy = None
        if self._watched is not None:
            self._watched.following = False

    def _following(self) -> bool:
        return self.watched().following or not (self._spec.stdout_path or self._spec.stderr_path)

    # --- exit -----------------------------------------------------------------------

    async def wait(self) -> ExitStatus:
        await self._watch.until(lambda: self._status is not None, self._watch_exit)
        assert self._status is not None
        return self._status

    async def _watch_exit(self) -> None:
        if self._exit is None:
            self._exit = await self._wait_engine()
        await self._drain_logs()
        self._status = self._exit

    async def _wait_engine(self) -> ExitStatus:
        status = await self._wait_event()
        self.forget()
        if self._stop_failed:  # a stop that could not be sent: the container goes now
            await self.runner.remove(self.container_id, self._socket)
        return status

    async def _wait_event(self) -> ExitStatus:
        watched = self.watched()
        seen_lost = watched.lost
        while True:
            while not watched.exited and watched.lost == seen_lost:
                await watched.changed()
            if watched.exited:
                if watched.exit_code is None:
                    return ExitStatus()
                if watched.killed and self._stop_asked is None and self.runner.engine_stops_containers \
                        and not await self.runner.api(self._socket).answers_now():
                    # The engine signalled it and does not answer a new connection: its
                    # shutdown stopped it (dockerd removes its socket before the kills).
                    # Its pooled connections may serve until it is gone: wait for that,
                    # then for its return (no restart is tried while it is away).
                    with anyio.move_on_after(SHUTDOWN_LIMIT):
                        while watched.lost == seen_lost:
                            await watched.changed()
                    await self._inspect_when_back()
                    return ExitStatus(exit_code=watched.exit_code, cause=(
                        f"stopped by the {self.runner.display} engine's shutdown "
                        f"({describe_exit(watched.exit_code, code_phrase='exit code')})"))
                return await self._unless_engine_left(watched.exit_code)
            seen_lost, lost_time = watched.lost, time.time()
            found, lost_at = await self._inspect_when_back()
            if not found:
                return ExitStatus()
            state = found[0].get("State") or {}
            if not state.get("Running"):
                ended_with = _exit_code(state)
                return ExitStatus(exit_code=ended_with, cause=(
                    f"ended while the {self.runner.display} engine was away "
                    f"({describe_exit(ended_with, code_phrase='exit code')})"))
            # It survived the engine (live-restore): follow it again, and carry out a
            # stop asked while the engine was away.
            if not self._following():
                await self.close_logs()
                with contextlib.suppress(RunnerError):
                    await self.follow_logs(since=lost_at or lost_time)
            if self._stop_asked is not None:
                stopped = await self._stop_late(*self._stop_asked)
                if stopped is not None:
                    return stopped

    async def _unless_engine_left(self, exit_code: int) -> ExitStatus:
        """How the container ended, now that the engine said ``exit_code``: its own exit, or,
        when the engine cannot be reached right after, an end by the engine's shutdown
        (``systemctl restart docker`` stops every container, then the engine). That is a
        failure for the restart policy whatever the code, and it is told only once the
        engine is back: a restart tried meanwhile could only fail and be counted."""
        try:
            await self.runner.inspect([self.container_id], self._socket)
        except EngineUnreachable:
            pass
        except RunnerError:
            return ExitStatus(exit_code=exit_code)
        else:
            return ExitStatus(exit_code=exit_code)
        await self._inspect_when_back()
        return ExitStatus(exit_code=exit_code, cause=(
            f"stopped by the {self.runner.display} engine's shutdown "
            f"({describe_exit(exit_code, code_phrase='exit code')})"))

    async def _stop_late(self, stop_signal: int, grace: float) -> ExitStatus | None:
        """The stop that failed while the engine was away, now that it is back: the
        container is stopped and removed, as ``stop()`` would have done. None if the
        engine went away again first (nothing known to be stopped)."""
        runner = self.runner
        found: list[dict[str, Any]] = []
        try:
            await self._terminate(stop_signal, grace)
            found = await runner.inspect([self.container_id], self._socket)
        except EngineUnreachable:
            return None
        except RunnerError:
            pass  # the container is gone already, or cannot be inspected: removed below
        await runner.remove(self.container_id, self._socket)
        exit_code = ((found[0].get("State") or {}) if found else {}).get("ExitCode")
        return ExitStatus(exit_code=exit_code if isinstance(exit_code, int) else None)

    async def _inspect_when_back(self) -> tuple[list[dict[str, Any]], float | None]:
        """The engine's description of the container, waiting (and saying so, once) while
        the engine cannot be reached; and since when it could not be, if it could not."""
        lost_at: float | None = None
        while True:
            mark = self.watched().back
            try:
                found = await self.runner.inspect([self.container_id], self._socket)
            except RunnerError as exc:
                if lost_at is None:
                    lost_at = time.time()
                    self._report(f"lost the {self.runner.display} engine ({exc}); "
                                 "waiting for it to come back")
                    if self.engine is not None:
                        self.engine(False)
                await self._engine_return(mark)
                continue
            if lost_at is not None:
                state = (found[0].get("State") or {}) if found else {}
                outcome = ("the container still runs" if state.get("Running") else
                           f"the container ended meanwhile ({describe_exit(_exit_code(state), code_phrase='exit code')})"
                           if found else "the container is gone")
                self._report(f"the {self.runner.display} engine is back after "
                             f"{time.time() - lost_at:.1f} s; {outcome}")
                if self.engine is not None:
                    self.engine(True)
            return found, lost_at

    async def _engine_return(self, mark: int) -> None:
        """Wait for the engine's thread to connect again (one connection attempt per
        engine, not one per container), ``mark`` being how many times it had when the
        engine was last asked; ask anyway after a while."""
        watched = self.watched()
        with anyio.move_on_after(5.0):
            while watched.back == mark:
                await watched.changed()

    def _report(self, message: str) -> None:
        log.warning("%s: %s", self._spec.fqn, message)
        if self.notice is not None:
            self.notice(message)

    # --- stop -----------------------------------------------------------------------

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        stop_signal = valid_stop_signal(stop_signal)
        grace = max(0.0, grace)
        if self._stop_done is not None and not self._stop_failed:
            await self._stop_done.wait()  # a stop is under way: share its outcome
            if not self._stop_failed:
                return await self.wait()
            # It could not be sent (its engine went away): this one tries again.
        self._stop_done = anyio.Event()
        self._stop_failed = False  # a stop asked again after a failed one tries again
        self._stop_asked = (stop_signal, grace)
        runner, socket, ref = self.runner, self._socket, self.container_id
        try:
            if self._status is None and self._exit is None:
                try:
                    await self._terminate(stop_signal, grace)
                except BaseException as exc:
                    self._stop_failed = True
                    with anyio.CancelScope(shield=True):
                        await runner.remove(ref, socket)
                        await self.close_logs()
                    if isinstance(exc, EngineUnreachable):
                        # wait() carries it out once the engine answers (see _wait_event).
                        raise EngineUnreachable(f"{exc}; the container is stopped when the engine answers again") from None
                    raise
            with anyio.fail_after(KILL_TIMEOUT + DRAIN_TIMEOUT):
                status = await self.wait()
            await runner.remove(ref, socket)
            return status
        finally:
            self._stop_done.set()

    async def _terminate(self, stop_signal: int, grace: float) -> None:
        runner, socket, ref = self.runner, self._socket, self.container_id
        if stop_signal == self.run_signal:
            await runner.stop_container(ref, socket, grace)
            return
        if await runner.kill(ref, socket, stop_signal):
            with anyio.move_on_after(grace):
                await self.wait()
                return
        await runner.kill(ref, socket, int(signals.SIGKILL))


def _exit_code(state: dict[str, Any]) -> int | None:
    """A container's exit code from its inspected ``State`` (None if not reported)."""
    code = state.get("ExitCode")
    return code if isinstance(code, int) else None


def _usage_of(stats: Any) -> tuple[float, int] | None:
    """CPU seconds and memory bytes of an engine's stats answer (Docker's and Podman's
    compatible shape); the memory without the page cache it can give back, as
    ``docker stats`` shows it."""
    if not isinstance(stats, dict):
        return None
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage")
    memory = stats.get("memory_stats") or {}
    used = memory.get("usage")
    if not isinstance(cpu, int | float) or not isinstance(used, int | float):
        return None
    details = memory.get("stats") or {}
    cache = details.get("inactive_file", details.get("total_inactive_file", 0))
    return cpu / 1e9, int(used - cache if isinstance(cache, int | float) and cache <= used else used)


def _last_writes(*paths: str) -> list[float]:
    """When each of the files that exist was last written (a Unix time)."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path:
                found.append(os.stat(path).st_mtime)
    return found
