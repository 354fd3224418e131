"""The signaling core plugin: remote spawn requests become services ("cocoons").

It keeps a WebSocket connection (the ``websockets`` library) to a signaling server,
registers this hive (its id, runner kinds, capacity and the cocoons it runs), and serves
the server's requests:

- ``spawn_cocoon``: a service ``cocoon-<id>`` is created in the ``cocoons`` SQLite source
  (added if missing) and started through the daemon; the answer is
  ``spawn_cocoon_result`` with ``ok`` and the FQN, or the error (a start that failed is
  deleted again);
- ``terminate_cocoon``: the cocoon is stopped and deleted;
- ``get_status``: the cocoons and their states.

The connection is re-opened after any end of it (the server closing or killed, a frame
over the size limit, a close in the middle of a spawn), with exponential backoff (and
jitter), and the hive registers again listing the cocoons still running; answers that
could not be sent go out after the registration. Cocoon state changes (started, crashed,
restarting, exited, stopped) are pushed as ``cocoon_state`` without being asked. The messages
are JSON objects with ``"v": 1`` and a ``type``; docs/signaling.md is their schema.

With ``placement = "fleet"``, a spawn is handed to the fleet plugin instead
(``plugin_call("fleet", "place", ...)``): the cocoon becomes a one-replica fleet service
``cocoon-<id>`` that runs on whichever hive of the fleet has room, and a terminate deletes
it (see docs/signaling.md).

Runner: ``runner`` in the settings, else ``$COCOON_RUNNER_TYPE``, else ``script``. A
script cocoon runs ``script_path`` (``$COCOON_SCRIPT_PATH``); a docker or podman cocoon
runs the requested ``image`` (prefixed with ``registry`` / ``$COCOON_REGISTRY``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shlex
import shutil
import socket
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec

from hive.plugin import CorePlugin, DaemonClient, DaemonEvent
from hive_client import (
    DaemonError,
    HiveError,
    ServiceCrashed,
    ServiceExited,
    ServiceRestarting,
    ServiceStarted,
    ServiceStopped,
)

__all__ = ["PROTOCOL", "Signaling", "SignalingSettings"]

PROTOCOL = 1
SOURCE = "cocoons"
PORT = "{{runtime.port.http}}"  # the cocoon's port, picked by the daemon at its start
log = logging.getLogger("hive.plugins.signaling")
_COCOON_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
# What a fleet service name takes (core_plugins/fleet/model.py), after "cocoon-".
_FLEET_COCOON_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,43}$")


class SignalingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str  # ws:// or wss://
    hive_id: str = ""  # default: the host name
    capacity: int = 10
    runner: Literal["script", "docker", "podman"] | None = None
    script_path: str | None = None
    registry: str | None = None
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    token: str | None = None  # sent as "Authorization: Bearer <token>"
    headers: dict[str, str] = {}  # more HTTP headers for the WebSocket handshake
    # Where a spawn runs: on this hive, or anywhere in the fleet (the fleet plugin places it).
    placement: Literal["local", "fleet"] = "local"
    fleet_labels: dict[str, str] = {}  # with placement = "fleet": a hive must carry these

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, not {self.url!r}")
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0 < self.reconnect_initial <= self.reconnect_max:
            raise ValueError("reconnect_initial must be positive and at most reconnect_max")


class SpawnError(Exception):
    """A spawn request that cannot be served; the message is the answer's error."""


class Signaling(CorePlugin[SignalingSettings]):
    name = "signaling"
    version = "1.0.0"
    Settings = SignalingSettings
    default_scope = "admin"  # it adds a source, creates and deletes services

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        self.hive_id = self.settings.hive_id or socket.gethostname()
        self._send_lock = anyio.Lock()
        self._socket: Any = None
        self._source_lock = anyio.Lock()
        self._capacity_lock = anyio.Lock()
        self._spawning: set[str] = set()  # cocoon ids being spawned (capacity counts them)
        self._unsent: list[dict[str, Any]] = []  # answers the connection ended under
        self._requests: anyio.abc.TaskGroup | None = None
        self.connected = anyio.Event()

    async def on_event(self, event: DaemonEvent) -> None:
        """Push cocoon state changes to the server."""
        states = {ServiceStarted: "running", ServiceCrashed: "crashed", ServiceRestarting: "restarting",
                  ServiceExited: "exited", ServiceStopped: "stopped"}
        state = states.get(type(event))
        fqn = getattr(event, "fqn", "")
        if state is None or not fqn.startswith(f"{SOURCE}:cocoon-"):
            return
        cocoon_id = fqn.removeprefix(f"{SOURCE}:cocoon-").partition("#")[0]
        message: dict[str, Any] = {"type": "cocoon_state", "hive_id": self.hive_id, "cocoon_id": cocoon_id,
                                   "fqn": fqn, "state": state}
        if isinstance(event, ServiceCrashed | ServiceStopped | ServiceExited):
            message["exit_code"] = event.exit_code
        if isinstance(event, ServiceCrashed):
            message.update(signal=event.signal, message=event.message)
        await self._send(message, keep=False)

    # --- the connection -------------------------------------------------------------

    async def run(self) -> None:
        from websockets.exceptions import WebSocketException

        delay = self.settings.reconnect_initial
        # Requests outlive the connection they came on: a spawn in flight when it ends
        # finishes, and its answer goes out after the next registration.
        async with anyio.create_task_group() as requests:
            self._requests = requests
            while True:
                try:
                    if await self._connection():
                        delay = self.settings.reconnect_initial
                except* (OSError, WebSocketException, TimeoutError) as ended:
                    # However the connection ended (the error may come in a group):
                    # reconnect; anything else is a bug and fails the plugin.
                    why = _first_leaf(ended)
                    log.warning("signaling server %s: %s; reconnecting in %.1f s", self.settings.url,
                                why or type(why).__name__, delay)
                await anyio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(self.settings.reconnect_max, delay * 2)

    async def _connection(self) -> bool:
        """One connection, until it ends; whether it got as far as registering."""
        from websockets.asyncio.client import connect

        headers = dict(self.settings.headers)
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        registered = False
        try:
            async with connect(self.settings.url, open_timeout=10, close_timeout=2,
                               additional_headers=headers or None) as websocket:
                await websocket.send(json.dumps({"v": PROTOCOL, **await self._register_message()}))
                self._socket = websocket  # answers go out only after the registration
                registered = True
                log.info("connected to %s as %s", self.settings.url, self.hive_id)
                unsent, self._unsent = self._unsent, []
                for message in unsent:
                    await self._send(message)
                assert self._requests is not None
                async for raw in websocket:
                    self._requests.start_soon(self._handle, raw)
        finally:
            self._socket = None
        return registered

    async def _send(self, message: dict[str, Any], *, keep: bool = True) -> None:
        """Send ``message``; with ``keep``, an answer the connection ended under is sent
        after the next registration. Never raises for a closed connection (the reader
        sees the end and reconnects)."""
        from websockets.exceptions import ConnectionClosed

        websocket = self._socket
        if websocket is None:
            if keep and message.get("request_id") is not None:
                self._unsent.append(message)
            return
        try:
            async with self._send_lock:
                await websocket.send(json.dumps({"v": PROTOCOL, **message}))
        except ConnectionClosed:
            if keep and message.get("request_id") is not None:
                self._unsent.append(message)

    async def _register_message(self) -> dict[str, Any]:
        return {"type": "register", "hive_id": self.hive_id, "version": self.version,
                "runners": _available_runners(), "capacity": self.settings.capacity,
                "cocoons": await self._cocoons()}

    async def _cocoons(self) -> list[dict[str, Any]]:
        try:
            services = await self.client.list_services(SOURCE)
        except DaemonError:
            return []  # no cocoons source yet
        return [{"cocoon_id": s.name.removeprefix("cocoon-"), "fqn": s.fqn, "state": str(s.state)}
                for s in services if "#" not in s.fqn]

    # --- requests -------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            await self._send({"type": "error", "message": f"unreadable message: {exc}"})
            return
        kind = message.get("type")
        request_id = message.get("request_id")
        if message.get("v") != PROTOCOL:
            await self._send({"type": "error", "request_id": request_id,
                              "message": f"unsupported protocol version {message.get('v')!r} (this hive speaks {PROTOCOL})"})
            return
        if kind == "spawn_cocoon":
            await self._spawn(message)
        elif kind == "terminate_cocoon":
            await self._terminate(message)
        elif kind == "get_status":
            await self._send({"type": "status", "request_id": request_id, "hive_id": self.hive_id,
                              "capacity": self.settings.capacity, "cocoons": await self._cocoons()})
        elif kind == "registered":
            pass
        else:
            await self._send({"type": "error", "request_id": request_id, "message": f"unknown message type {kind!r}"})

    async def _spawn(self, message: dict[str, Any]) -> None:
        cocoon_id = str(message.get("cocoon_id") or "")
        answer: dict[str, Any] = {"type": "spawn_cocoon_result", "request_id": message.get("request_id"),
                                  "cocoon_id": cocoon_id}
        try:
            if self.settings.placement == "fleet":
                placed = await self._place_in_fleet(cocoon_id, message)
                fqn = placed["fqn"]
                answer["hive_id"] = placed["hive_id"]
            else:
                fqn = await self._create(cocoon_id, message)
        except SpawnError as exc:
            answer.update(ok=False, error=str(exc))
        except HiveError as exc:
            answer.update(ok=False, error=f"the daemon refused: {exc}")
        else:
            answer.update(ok=True, fqn=fqn)
        await self._send(answer)

    async def _create(self, cocoon_id: str, message: dict[str, Any]) -> str:
        if not _COCOON_ID.match(cocoon_id):
            raise SpawnError(f"invalid cocoon_id {cocoon_id!r}: letters, digits, _ and -, 63 at most")
        async with self._capacity_lock:  # concurrent spawns count each other
            running = {c["cocoon_id"] for c in await self._cocoons()
                       if c["state"] in ("running", "starting", "unhealthy")}
            if cocoon_id in self._spawning:
                raise SpawnError(f"cocoon {cocoon_id} is already being spawned")
            if len(running | self._spawning) >= self.settings.capacity:
                raise SpawnError(f"this hive is at its capacity of {self.settings.capacity} cocoons")
            self._spawning.add(cocoon_id)
        try:
            return await self._create_reserved(cocoon_id, message)
        finally:
            self._spawning.discard(cocoon_id)

    async def _place_in_fleet(self, cocoon_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """Hand the spawn to the fleet plugin: a one-replica fleet service, answered once a
        hive of the fleet is assigned it (its ``fqn`` there, ``hive_id``, ``token``). The
        fleet's capacity counts, not this hive's. The hive it lands on picks its ``http``
        port and serves it at ``/cocoon/{id}/`` through a route of its own."""
        if not _FLEET_COCOON_ID.match(cocoon_id):
            raise SpawnError(f"invalid cocoon_id {cocoon_id!r} for fleet placement: lower-case letters, digits, "
                             "_ and -, 44 at most")
        config = self._service_config(message, {**_env(message), "COCOON_ID": cocoon_id})
        # Not in the cocoons source there: the proxy's /cocoon/{id}/* does not cover it.
        config["proxy"] = {"path": f"/cocoon/{cocoon_id}", "strip_prefix": True}
        request = {"name": f"cocoon-{cocoon_id}", "config": config, "labels": self.settings.fleet_labels}
        try:
            placed: dict[str, Any] = await self.client.plugin_call("fleet", "place", request)
        except HiveError as exc:
            raise SpawnError(f"the fleet refused: {exc}") from None
        return placed

    async def _create_reserved(self, cocoon_id: str, message: dict[str, Any]) -> str:
        config = self._service_config(message, _env(message) | {"COCOON_ID": cocoon_id})
        await self._ensure_source()
        name = f"cocoon-{cocoon_id}"
        fqn = f"{SOURCE}:{name}"
        await self.client.create_service(SOURCE, name, config, start=False)
        try:
            await self.client.start_service(fqn)
        except DaemonError as exc:
            status = await self.client.get_service_status(fqn)
            await self._remove(fqn)
            raise SpawnError(status.last_error or exc.message) from None
        return fqn

    def _service_config(self, message: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        # The `http` port, which the daemon picks, is $PORT, and where /cocoon/{id}/* goes.
        env = env | {"PORT": PORT}
        rollout = {"type": "recreate", "recreate": {"ports": {"http": 0}}}
        runner = self.settings.runner or os.environ.get("COCOON_RUNNER_TYPE") or "script"
        if runner == "script":
            path = self.settings.script_path or os.environ.get("COCOON_SCRIPT_PATH")
            if not path:
                raise SpawnError("no cocoon script: set COCOON_SCRIPT_PATH or script_path")
            if not os.path.isfile(path) or not os.access(path, os.X_OK):
                raise SpawnError(f"cocoon script {path} does not exist or is not executable")
            return {"runner": {"type": "script", "script": {"run": f"exec {shlex.quote(path)}"}},
                    "environment": {"static": env}, "rollout": rollout, "restart": "on-failure"}
        if runner not in ("docker", "podman"):
            raise SpawnError(f"unknown COCOON_RUNNER_TYPE {runner!r} (script, docker or podman)")
        image = message.get("image")
        if not isinstance(image, str) or not image:
            raise SpawnError(f"a {runner} cocoon needs an image")
        registry = self.settings.registry or os.environ.get("COCOON_REGISTRY")
        if registry:
            image = f"{registry.rstrip('/')}/{image}"
        # The container listens on $PORT, published on the same host port.
        return {"runner": {"type": runner, runner: {"image": image, "environment": env, "ports": [f"{PORT}:{PORT}"]}},
                "rollout": rollout, "restart": "on-failure"}

    async def _ensure_source(self) -> None:
        """Add the cocoons source if it is missing (checked each time: `hive source remove
        cocoons` may have removed it)."""
        async with self._source_lock:
            if SOURCE not in [s.name for s in await self.client.list_sources()]:
                home = (await self.client.status()).home or "."
                await self.client.add_source(Path(home) / f"{SOURCE}.db", name=SOURCE)

    async def _terminate(self, message: dict[str, Any]) -> None:
        cocoon_id = str(message.get("cocoon_id") or "")
        answer: dict[str, Any] = {"type": "terminate_cocoon_result", "request_id": message.get("request_id"),
                                  "cocoon_id": cocoon_id}
        try:
            if self.settings.placement == "fleet":  # its hive stops it once the fleet service is gone
                await self.client.plugin_call("fleet", "delete", {"name": f"cocoon-{cocoon_id}"})
            else:
                await self._remove(f"{SOURCE}:cocoon-{cocoon_id}")
        except HiveError as exc:
            answer.update(ok=False, error=str(exc))
        else:
            answer.update(ok=True)
        await self._send(answer)

    async def _remove(self, fqn: str) -> None:
        await self.client.stop_service(fqn)
        await self.client.delete_service(fqn)


def _env(message: dict[str, Any]) -> dict[str, str]:
    """A spawn's ``env``, as strings; SpawnError when it is not an object of scalars."""
    env = message.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float, bool)) for v in env.values()):
        raise SpawnError("env must be an object of strings")
    return {str(k): str(v) for k, v in env.items()}


def _available_runners() -> list[str]:
    """The runner kinds this hive can run: script always, a container engine if its
    command is installed."""
    return ["script", *(engine for engine in ("docker", "podman") if shutil.which(engine))]


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup) and group.exceptions:
        group = group.exceptions[0]
    return group
