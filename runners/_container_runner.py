"""The container runner: a service is one container, driven through the engine's HTTP API
(the Docker Engine API over its socket; podman's Docker-compatible service). The docker
and podman runners are this class with the engine's name and differences; compose's
containers are stopped, inspected and adopted through it too.

- **Start** is ``POST /containers/create`` (the block as :func:`runners._container.create_body`
  has it: the environment in the body's ``Env``, on no command line) then
  ``POST /containers/{id}/start``. A missing image is pulled (``POST /images/create``)
  as ``pull`` says; a stale container of the same name (409) is removed and the create
  tried once more; a container that cannot start (a port taken) is removed.
- **Exit, output, stop** are the handle's (:mod:`runners._container_handle`).
- **Adoption** takes a container that still runs with the spec's FQN and config hash;
  **discovery** finds those no record names by the marker in their environment.
- **Errors.** Everything a user can act on is a :class:`RunnerError` with one line: the
  engine unreachable (podman's, not installed), the image missing with ``deny_pull`` or a failed
  pull (with the engine's message), a port already in use, an invalid option.

Hook steps (``run_once``) go through the API too (:mod:`runners._api_hook`), and so do
``cmd`` health checks (the exec endpoints: :mod:`runners._engine_exec`): no engine CLI is
needed. ``binary`` names podman's, which starts its API service when none answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio

from ._api_hook import run_hook
from ._container import (
    KILL_TIMEOUT,
    ContainerConfig,
    config_hash,
    create_body,
    missing_image,
    passed_environment,
    signal_name,
    spec_container_name,
)
from ._container_handle import ContainerHandle
from ._container_keys import pull_policy
from ._engine_api import (
    ApiError,
    EngineApi,
    EngineUnreachable,
    Starter,
    api_for,
    filters,
    socket_path,
)
from ._engine_watch import DOCKER_EVENTS, EngineWatch
from .base import Runner, RunnerError, RunSpec, decode_config, valid_stop_signal

__all__ = ["ContainerRunner"]

log = logging.getLogger("hive.runners.container")

_IN_USE = re.compile(
    r"(?:listen (?:tcp|udp|sctp)[46]? |Bind for )(\[[0-9a-fA-F:.]*\]|[0-9.]+|[0-9a-fA-F:]*):(\d+)"
)


class ContainerRunner(Runner):
    """Runs a service as a container through the engine's HTTP API."""

    name: ClassVar[str] = "container"
    Config: ClassVar[type[ContainerConfig]] = ContainerConfig
    engine: ClassVar[str] = "docker"  # the CLI's default name
    display: ClassVar[str] = "Docker"  # the engine's name in messages
    # An engine's error saying it cannot be reached; group "at": the socket it tried.
    unreachable_text: ClassVar[re.Pattern[str]] = re.compile(
        r"Cannot connect to the Docker daemon at (?:unix://)?(?P<at>\S+?)\.?(?:\s|$)|Cannot connect to"
    )
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
        self.binary = binary or self.engine
        self.socket: str | None = None  # [runners.NAME] socket; a block's `socket` wins

    def configure(self, settings: Mapping[str, Any]) -> None:
        """``[runners.docker]`` / ``[runners.podman]``: ``binary`` (the CLI, a name on PATH
        or a path: podman's starts its API service; docker's is not used) and ``socket`` (the engine's socket path or URL)."""
        unknown = sorted(set(settings) - {"binary", "socket"})
        if unknown:
            raise RunnerError(f"unknown setting {unknown[0]!r} (known: binary, socket)")
        binary = settings.get("binary", self.engine)
        if not isinstance(binary, str) or not binary.strip():
            raise RunnerError(f"binary must be a program name or path, not {binary!r}")
        socket = settings.get("socket")
        if socket is not None and (not isinstance(socket, str) or not socket.strip()):
            raise RunnerError(f"socket must be a path or URL, not {socket!r}")
        self.binary, self.socket = binary.strip(), socket

    # --- the engine -----------------------------------------------------------------

    def config_of(self, spec: RunSpec) -> ContainerConfig:
        """The spec's block, decoded; RunnerError quoting the ``$.path`` of what is wrong."""
        return decode_config(spec.config, ContainerConfig, self.name)

    def socket_of(self, socket: str | None) -> str | None:
        """The engine socket to use: a block's own ``socket``, else the runner setting.

        The engine helpers below take the block's socket (None: the setting's), not the
        block: a container whose service is gone has only its record to say it."""
        return socket or self.socket

    def unreachable(self, message: str, socket: str | None) -> EngineUnreachable | None:
        """The error for an engine daemon that cannot be reached, if that is what
        ``message`` (a CLI's error output) says."""
        match = self.unreachable_text.search(message)
        if match is None:
            return None
        where = match.groupdict().get("at") or self.socket_of(socket) or ""
        at = f" at {where}" if where else ""
        return EngineUnreachable(f"cannot reach the {self.display} engine{at}: {message}")

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

    # --- containers -----------------------------------------------------------------

    async def remove(self, ref: str, socket: str | None = None) -> None:
        """Remove the container and its anonymous volumes, shielded from cancellation:
        whatever happens, it is gone (an error is not said: it may be gone already)."""
        with anyio.CancelScope(shield=True), contextlib.suppress(RunnerError):
            await self.api(socket).request("DELETE", f"/containers/{ref}", params={"force": "1", "v": "1"},
                                           timeout=KILL_TIMEOUT + 20)

    async def inspect(self, refs: Sequence[str], socket: str | None = None) -> list[dict[str, Any]]:
        """The engine's JSON description of containers (those that exist)."""
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
        """The id of the image ``ref`` names now (no ``sha256:``); None if there is none."""
        try:
            info = await self.api(socket).request("GET", f"/images/{ref}/json")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self.api_error("image inspect", exc) from None
        found = str((info or {}).get("Id") or "") if isinstance(info, dict) else ""
        return found.removeprefix("sha256:") or None

    async def stop_container(self, ref: str, socket: str | None, grace: float) -> None:
        """The container's own stop signal, SIGKILL after ``grace``; one that is gone
        already is not an error."""
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
                                           params={"signal": signal_name(signal)})
        except ApiError as exc:
            if exc.status in (404, 409) or _not_running(exc):
                return False
            raise self.api_error("kill", exc) from None
        return True

    # --- start ----------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> ContainerHandle:
        config = self.config_of(spec)
        image, socket = config.image.strip(), config.socket
        env = passed_environment(spec, config)
        digest = config_hash(spec, image, env)
        name = spec_container_name(spec, config)
        body = create_body(spec, config, env, digest)
        api = self.api(socket)
        container_id = await self.create(api, body, name, config)
        handle = ContainerHandle(
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
        """Create the container ``name``, pulling its image and removing a stale one of
        its name as needed; its id."""
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

    # --- adopt, discover ------------------------------------------------------------

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ContainerHandle | None:
        """The container of ``record`` if it still runs with the spec's FQN and config
        hash; None otherwise (gone, stopped, or started from another configuration)."""
        container_id = _container_record(record, self.name)
        config = self.config_of(spec)
        digest = config_hash(spec, config.image.strip(), passed_environment(spec, config))
        found = await self.inspect([container_id], config.socket)
        if not found:
            return None
        info = found[0]
        labels = (info.get("Config") or {}).get("Labels") or {}
        state = info.get("State") or {}
        if not state.get("Running") or labels.get("hive.fqn") != spec.fqn \
                or labels.get("hive.config-hash") != digest:
            return None
        try:
            run_signal = int(labels.get("hive.stop-signal") or spec.stop_signal)
        except ValueError:
            run_signal = 0  # unknown: stop() sends the signal itself
        handle = ContainerHandle(
            runner=self, spec=spec, container_id=str(info.get("Id") or container_id),
            name=str(info.get("Name") or record.get("name") or "").lstrip("/"),
            config_hash=digest, run_signal=run_signal, adopted=True, socket=config.socket,
        )
        if not handle.reuse_follower(record.get("logs_pid")):
            await handle.follow_logs(since=time.time())
        return handle

    async def stop_orphan(self, fqn: str, record: dict[str, Any], grace: float) -> bool:
        """Stop and remove the container ``record`` names, if its ``hive.fqn`` label
        still says it is ``fqn``'s. The service's configuration is gone: the engine socket
        is the recorded one, and the container's own stop signal is sent."""
        container_id = _container_record(record, self.name)
        recorded = record.get("socket")
        socket = recorded if isinstance(recorded, str) and recorded else None
        found = await self.stop_leftover(
            container_id, socket, grace, lambda labels: labels.get("hive.fqn") == fqn
        )
        if found is None and "socket" not in record:
            # A record from before sockets were recorded: it may be on another engine.
            where = self.socket_of(socket) or "the default socket"
            log.warning("%s: container %s not found on the %s engine at %s; if its service had "
                        "a socket of its own, remove it there", fqn, container_id, self.display, where)
        return bool(found)

    async def stop_leftover(
        self, container_id: str, socket: str | None, grace: float,
        ours: Callable[[Mapping[str, str]], bool],
    ) -> bool | None:
        """Stop (:meth:`stop_container`) and remove the container if its labels pass
        ``ours``; whether it was running, None if there is no such container."""
        found = await self.inspect([container_id], socket)
        if not found:
            return None
        info = found[0]
        if not ours((info.get("Config") or {}).get("Labels") or {}):
            return False
        running = bool((info.get("State") or {}).get("Running"))
        if running:
            await self.stop_container(container_id, socket, grace)
        await self.remove(container_id, socket)
        return running

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        """Records of running containers labelled ``hive.fqn=<fqn>`` whose environment
        carries ``marker`` (as the value of the variable that holds it in ``spec.env``),
        newest first."""
        socket = self.config_of(spec).socket
        try:
            listed = await self.api(socket).request(
                "GET", "/containers/json", params=filters(label=[f"hive.fqn={spec.fqn}"]))
        except RunnerError as exc:
            raise self.api_error("list", exc) from None
        ids = [str(item["Id"]) for item in listed or [] if isinstance(item, dict) and "Id" in item]
        return await self._marked_records(ids, spec, marker, socket)

    async def _marked_records(self, ids: list[str], spec: RunSpec, marker: str, socket: str | None) -> list[dict[str, Any]]:
        """Records of the containers ``ids`` whose environment carries ``marker``, newest first."""
        keys = [key for key, value in spec.env.items() if value == marker]
        wanted = {f"{key}={marker}" for key in keys}
        records = []
        for info in await self.inspect(ids, socket):
            environ = (info.get("Config") or {}).get("Env") or []
            if wanted and not wanted & set(environ):
                continue
            labels = (info.get("Config") or {}).get("Labels") or {}
            records.append((str(info.get("Created") or ""), {
                "engine": self.name,
                "container_id": str(info.get("Id")),
                "name": str(info.get("Name") or "").lstrip("/"),
                "config_hash": labels.get("hive.config-hash"),
                "logs_pid": None,
            }))
        records.sort(key=lambda item: item[0], reverse=True)
        return [record for _, record in records]


def _container_record(record: dict[str, Any], engine: str) -> str:
    """The container id of a record of ``engine``; RunnerError if it is not one."""
    try:
        container_id = str(record["container_id"])
        recorded = str(record.get("engine") or engine)
    except (KeyError, TypeError):
        raise RunnerError(f"not a {engine} container record: {record!r}") from None
    if recorded != engine or not container_id:
        raise RunnerError(f"not a {engine} container record: {record!r}")
    return container_id


def _name_in_use(exc: ApiError) -> bool:
    """Whether a create was refused for its name (Docker: 409; podman 4: 500, "that name
    is already in use")."""
    return exc.status == 409 or (exc.status == 500 and "name" in str(exc) and "already in use" in str(exc))


def _not_running(exc: ApiError) -> bool:
    """Whether a request was refused because the container does not run (Docker: 409;
    podman 4: 500, "container state improper")."""
    return exc.status == 500 and "state improper" in str(exc)
