"""The container runner on the engine's HTTP API (the Docker Engine API over its socket).

What :mod:`runners._container` does with the engine's CLI, this does with requests, behind
the same runner contract and with the same messages:

- **Start** is ``POST /containers/create`` (the environment in the body's ``Env``: on no
  command line) then ``POST /containers/{id}/start``. A missing image is pulled
  (``POST /images/create``) unless ``deny_pull``; a stale container of the same name
  (409) is removed and the create tried once more; a container that cannot start (a port
  taken) is removed.
- **Exit and output** come from the engine's thread (:mod:`runners._engine_watch`): one
  event stream per engine, one log stream per container. No helper process.
- **Stop** is ``POST /containers/{id}/stop?t=GRACE`` (the container's stop signal, then
  SIGKILL), or ``/kill`` with another signal; then ``DELETE /containers/{id}?force=1&v=1``.
- **The engine going away**: the event stream's end tells every handle at once; each
  then waits for the engine's thread to connect again (it tries after 0.1 s, doubling up
  to 0.5 s) and settles as the CLI handle does. A stop that could not be sent is carried out on the engine's
  return, and a container that ended meanwhile is removed then.

Hook steps (``run_once``) go through the API too (:mod:`runners._api_hook`); ``cmd``
checks (``exec``) still use the engine's CLI: one short process for the check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal as signals
import time
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import psutil

from ._api_hook import run_hook
from ._container import (
    _IN_USE,
    DRAIN_TIMEOUT,
    KILL_TIMEOUT,
    ContainerConfig,
    ContainerHandle,
    ContainerRunner,
    ContainerSecurity,
    config_hash,
    missing_image,
    parse_port,
    parse_volume,
    passed_environment,
    spec_container_name,
)
from ._container_keys import common_body, pull_policy
from ._engine_api import (
    ApiError,
    EngineApi,
    EngineUnreachable,
    Starter,
    api_for,
    filters,
    socket_path,
)
from ._engine_watch import DOCKER_EVENTS, Copy, EngineWatch, Watched
from .base import ExitStatus, RunnerError, RunSpec, describe_exit, valid_stop_signal

__all__ = ["ApiContainerHandle", "ApiContainerRunner"]

# How long an engine's shutdown may take to end its event stream once it stopped a
# container (dockerd's own limit is its --shutdown-timeout, 15 s, after the containers').
SHUTDOWN_LIMIT = 120.0


class ApiContainerRunner(ContainerRunner):
    """Runs a service as a container through the engine's HTTP API."""

    # The events filter the engine honours (see runners._engine_watch).
    events: ClassVar[dict[str, list[str]]] = DOCKER_EVENTS
    # Whether the engine's shutdown stops its containers (dockerd does; podman's API
    # service does not hold them).
    engine_stops_containers: ClassVar[bool] = True
    # Whether a start removes a stale container of its name before the create rather than
    # on its conflict: podman creates the container's storage before it finds the name in
    # use (a failed create costs more than a removal of nothing).
    remove_stale_first: ClassVar[bool] = False

    def __init__(self, binary: str | None = None) -> None:
        super().__init__(binary)
        self.handle_class = ApiContainerHandle

    def default_socket(self) -> str | None:
        """The engine's socket when neither the block nor the settings name one (None:
        Docker's: ``DOCKER_HOST``, else ``/var/run/docker.sock``)."""
        return None

    def starter(self, path: str) -> Starter | None:
        """What starts the engine at ``path`` when it does not answer (None: nothing, the
        engine is someone else's to run)."""
        return None

    def socket_file(self, socket: str | None) -> str:
        return socket_path(self.socket_of(socket), self.default_socket())

    def api(self, socket: str | None) -> EngineApi:
        path = self.socket_file(socket)
        return api_for(path, self.display, self.starter(path))

    def watch(self, socket: str | None) -> EngineWatch:
        path = self.socket_file(socket)
        return EngineWatch.of(path, self.display, starter=self.starter(path), events=self.events)

    def api_error(self, action: str, exc: RunnerError) -> RunnerError:
        """The user's words for an engine's error answer (a port taken, ...)."""
        if isinstance(exc, EngineUnreachable):
            return exc
        message = str(exc)
        in_use = _IN_USE.search(message)
        if in_use is not None and ("already in use" in message or "already allocated" in message):
            return RunnerError(f"port {in_use.group(1)}:{in_use.group(2)} is already in use")
        return RunnerError(f"{self.display} engine: {action} failed: {message}")

    # --- plumbing ---------------------------------------------------------------------

    async def remove(self, ref: str, socket: str | None = None) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(RunnerError):
            await self.api(socket).request("DELETE", f"/containers/{ref}", params={"force": "1", "v": "1"},
                                           timeout=KILL_TIMEOUT + 20)

    async def inspect(self, refs: Any, socket: str | None = None) -> list[dict[str, Any]]:
        api, found = self.api(socket), []
        for ref in refs:
            try:
                info = await api.request("GET", f"/containers/{ref}/json")
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise self.api_error("inspect", exc) from None
            if isinstance(info, dict):
                found.append(info)
        return found

    async def image_id(self, ref: str, socket: str | None = None) -> str | None:
        try:
            info = await self.api(socket).request("GET", f"/images/{ref}/json")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self.api_error("image inspect", exc) from None
        found = str((info or {}).get("Id") or "") if isinstance(info, dict) else ""
        return found.removeprefix("sha256:") or None

    async def stop_container(self, ref: str, socket: str | None, grace: float) -> None:
        seconds = math.ceil(max(0.0, grace))
        try:
            await self.api(socket).request("POST", f"/containers/{ref}/stop", params={"t": str(seconds)},
                                           timeout=seconds + KILL_TIMEOUT + 20)
        except ApiError as exc:
            if exc.status != 404:
                raise self.api_error("stop", exc) from None

    async def kill(self, ref: str, socket: str | None, signal: int) -> bool:
        """Send ``signal``; False if the container is not running (or gone)."""
        try:
            await self.api(socket).request("POST", f"/containers/{ref}/kill",
                                           params={"signal": _signal_text(signal)})
        except ApiError as exc:
            if exc.status in (404, 409) or _not_running(exc):
                return False
            raise self.api_error("kill", exc) from None
        return True

    # --- start ------------------------------------------------------------------------

    def create_body(self, spec: RunSpec, config: ContainerConfig, env: dict[str, str], digest: str,
                    *, hook: bool = False) -> dict[str, Any]:
        """The ``/containers/create`` body: what ``run -d`` options say, as the API has them.
        A hook step's container is labelled ``hive.hook-of``, not ``hive.fqn``: it is
        not an instance, and discovery must not find it."""
        stop_signal = valid_stop_signal(spec.stop_signal)
        security = config.security or ContainerSecurity()
        exposed: dict[str, dict[str, Any]] = {}
        bindings: dict[str, list[dict[str, str]]] = {}
        for entry in config.ports:
            published = parse_port(entry, config.bind_ip or "127.0.0.1")
            if published is None:
                continue
            address, host, inner = published.rsplit(":", 2)
            key = inner  # "80/tcp"
            exposed[key] = {}
            bindings.setdefault(key, []).append({"HostIp": address.strip("[]"), "HostPort": host})
        host_config: dict[str, Any] = {
            "PortBindings": bindings,
            "Binds": [parse_volume(entry, spec.working_dir or ".") for entry in config.volumes],
            "CapDrop": ["ALL"] if security.cap_drop_all else [],
            "CapAdd": list(security.cap_add),
            "SecurityOpt": (["no-new-privileges"] if security.no_new_privileges else []) + list(security.security_opt),
            "ReadonlyRootfs": security.read_only,
        }
        if config.network_mode:
            host_config["NetworkMode"] = config.network_mode
        common, common_host = common_body(config)
        host_config.update(common_host)
        body: dict[str, Any] = {
            "Image": config.image.strip(),
            "Env": [f"{key}={value}" for key, value in env.items()],
            "Labels": {**config.labels, "hive.hook-of" if hook else "hive.fqn": spec.fqn,
                       "hive.source": spec.fqn.partition(":")[0],
                       "hive.config-hash": digest, "hive.stop-signal": str(stop_signal)},
            "StopSignal": _signal_text(stop_signal),
            "ExposedPorts": exposed,
            "HostConfig": host_config,
        }
        if config.command is not None:
            body["Cmd"] = list(config.command)
        if config.entrypoint is not None:
            body["Entrypoint"] = list(config.entrypoint) or [""]
        if security.user:
            body["User"] = security.user
        body.update(common)
        return body

    async def start(self, spec: RunSpec) -> ContainerHandle:
        config = self.config_of(spec)
        image, socket = config.image.strip(), config.socket
        env = passed_environment(spec, config)
        digest = config_hash(spec, image, env)
        name = spec_container_name(spec, config)
        self.executable()  # cmd checks and hook steps still need the CLI: say so now
        body = self.create_body(spec, config, env, digest)
        api = self.api(socket)
        container_id = await self.create(api, body, name, config)
        handle = ApiContainerHandle(
            runner=self, spec=spec, container_id=container_id, name=name, config_hash=digest,
            run_signal=valid_stop_signal(spec.stop_signal), socket=socket,
        )
        try:
            handle.watched()  # before the start: its exit cannot come first
            try:
                await api.request("POST", f"/containers/{container_id}/start")
            except RunnerError as exc:
                raise self.api_error("start", exc) from None
            await handle.follow_logs(since=None)
            return handle
        except BaseException:
            with anyio.CancelScope(shield=True):
                await handle.close_logs()
                handle.forget()
                await self.remove(container_id, socket)
            raise

    async def run_once(self, spec: RunSpec, output: Callable[[str, str], None]) -> int:
        """A hook step through the API (see :mod:`runners._api_hook`)."""
        return await run_hook(self, spec, output)

    async def create(self, api: EngineApi, body: dict[str, Any], name: str, config: ContainerConfig) -> str:
        pulled = conflicted = False
        if pull_policy(config.pull, config.deny_pull) == "always":
            pulled = True
            await self._pull(api, config)
        if self.remove_stale_first:
            conflicted = True
            await self.remove(name, config.socket)  # a container that ended, left for inspection
        while True:
            try:
                created = await api.request("POST", "/containers/create", params={"name": name}, body=body)
                return str(created["Id"])
            except ApiError as exc:
                if _name_in_use(exc) and not conflicted:  # a stale container of that name
                    conflicted = True
                    await self.remove(name, config.socket)
                    continue
                if exc.status == 404 and not pulled and "image" in str(exc).lower():
                    pulled = True
                    await self._pull(api, config)
                    continue
                raise self.api_error("create", exc) from None
            except (KeyError, TypeError):
                raise RunnerError(f"the {self.display} engine created no container (no id in its answer)") from None

    async def _pull(self, api: EngineApi, config: ContainerConfig) -> None:
        image = config.image.strip()
        if pull_policy(config.pull, config.deny_pull) == "never":
            raise RunnerError(missing_image(image, config))
        try:
            async with api.stream("/images/create", {"fromImage": image}) as response:
                async for line in response.aiter_lines():
                    with contextlib.suppress(ValueError, AttributeError):
                        error = json.loads(line).get("error")
                        if error:
                            raise RunnerError(f"cannot pull image {image}: {' '.join(str(error).split())}")
        except ApiError as exc:
            raise RunnerError(f"cannot pull image {image}: {exc}") from None

    # --- adopt, discover ----------------------------------------------------------------

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        socket = self.config_of(spec).socket
        try:
            listed = await self.api(socket).request(
                "GET", "/containers/json", params=filters(label=[f"hive.fqn={spec.fqn}"]))
        except RunnerError as exc:
            raise self.api_error("list", exc) from None
        ids = [str(item["Id"]) for item in listed or [] if isinstance(item, dict) and "Id" in item]
        return await self._marked_records(ids, spec, marker, socket)


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


def _name_in_use(exc: ApiError) -> bool:
    """Whether a create was refused for its name (Docker: 409; podman 4: 500, "that name
    is already in use")."""
    return exc.status == 409 or (exc.status == 500 and "name" in str(exc) and "already in use" in str(exc))


def _not_running(exc: ApiError) -> bool:
    """Whether a request was refused because the container does not run (Docker: 409;
    podman 4: 500, "container state improper")."""
    return exc.status == 500 and "state improper" in str(exc)


def _last_writes(*paths: str) -> list[float]:
    """When each of the files that exist was last written (a Unix time)."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path:
                found.append(os.stat(path).st_mtime)
    return found


def _signal_text(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return str(number)


class ApiContainerHandle(ContainerHandle):
    """One container supervised through the engine's API and its thread (no process)."""

    runner: ApiContainerRunner

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._watched: Watched | None = None
        self._copy: Copy | None = None

    def watched(self) -> Watched:
        """The container's state as the engine's thread tells it (registered on first use;
        an adopted container is checked at once: it may have ended meanwhile)."""
        if self._watched is None:
            self._watched = Watched()
            self._watched.report = self._report
            self.runner.watch(self._socket).watch(self.container_id, self._watched, check=self.adopted)
        return self._watched

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
        """A ``logs -f`` a daemon of the CLI runner left: ended (its output is copied
        through the API from now on, not twice)."""
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
                code = state.get("ExitCode")
                ended_with = code if isinstance(code, int) else None
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

    def _engine_mark(self) -> int:
        return self.watched().back

    async def _engine_return(self, delay: float, mark: int) -> float:
        """Wait for the engine's thread to connect again (one connection attempt per
        engine, not one per container); ask anyway after a while."""
        watched = self.watched()
        with anyio.move_on_after(5.0):
            while watched.back == mark:
                await watched.changed()
        return delay

    # --- stop -----------------------------------------------------------------------

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
