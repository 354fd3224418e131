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

The connection is re-opened after the server goes away, with exponential backoff (and
jitter), and the hive registers again listing the cocoons still running. The messages
are JSON objects with ``"v": 1`` and a ``type``; docs/signaling.md is their schema.

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
import socket
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from hive.plugin import CorePlugin, DaemonClient, DaemonEvent
from hive_client import DaemonError, HiveError

__all__ = ["PROTOCOL", "Signaling", "SignalingSettings"]

PROTOCOL = 1
SOURCE = "cocoons"
log = logging.getLogger("hive.plugins.signaling")
_COCOON_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class SignalingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str  # ws:// or wss://
    hive_id: str = ""  # default: the host name
    capacity: int = 10
    runner: Literal["script", "docker", "podman"] | None = None
    script_path: str | None = None
    registry: str | None = None
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0

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

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        self.hive_id = self.settings.hive_id or socket.gethostname()
        self._send_lock = anyio.Lock()
        self._socket: Any = None
        self._source_ready = False
        self.connected = anyio.Event()

    async def on_event(self, event: DaemonEvent) -> None:
        pass

    # --- the connection -------------------------------------------------------------

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        delay = self.settings.reconnect_initial
        while True:
            try:
                async with connect(self.settings.url, open_timeout=10, close_timeout=2) as websocket:
                    self._socket = websocket
                    await self._send(await self._register_message())
                    delay = self.settings.reconnect_initial
                    log.info("connected to %s as %s", self.settings.url, self.hive_id)
                    async with anyio.create_task_group() as requests:
                        async for raw in websocket:
                            requests.start_soon(self._handle, raw)
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.warning("signaling server %s: %s; reconnecting in %.1f s", self.settings.url, exc, delay)
            finally:
                self._socket = None
            await anyio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(self.settings.reconnect_max, delay * 2)

    async def _send(self, message: dict[str, Any]) -> None:
        websocket = self._socket
        if websocket is None:
            return  # the connection went away: the server learns the state on re-registration
        async with self._send_lock:
            await websocket.send(json.dumps({"v": PROTOCOL, **message}))

    async def _register_message(self) -> dict[str, Any]:
        return {"type": "register", "hive_id": self.hive_id, "version": self.version,
                "runners": ["script", "docker", "podman"], "capacity": self.settings.capacity,
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
        running = [c for c in await self._cocoons() if c["state"] in ("running", "starting", "unhealthy")]
        if len(running) >= self.settings.capacity:
            raise SpawnError(f"this hive is at its capacity of {self.settings.capacity} cocoons")
        env = message.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, (str, int, float, bool)) for v in env.values()):
            raise SpawnError("env must be an object of strings")
        env = {str(k): str(v) for k, v in env.items()} | {"COCOON_ID": cocoon_id}
        config = self._service_config(message, env)
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
        runner = self.settings.runner or os.environ.get("COCOON_RUNNER_TYPE") or "script"
        if runner == "script":
            path = self.settings.script_path or os.environ.get("COCOON_SCRIPT_PATH")
            if not path:
                raise SpawnError("no cocoon script: set COCOON_SCRIPT_PATH or script_path")
            if not os.path.isfile(path) or not os.access(path, os.X_OK):
                raise SpawnError(f"cocoon script {path} does not exist or is not executable")
            return {"runner": {"type": "script", "script": {"run": f"exec {path}"}},
                    "environment": {"static": env}, "restart": "on-failure"}
        if runner not in ("docker", "podman"):
            raise SpawnError(f"unknown COCOON_RUNNER_TYPE {runner!r} (script, docker or podman)")
        image = message.get("image")
        if not isinstance(image, str) or not image:
            raise SpawnError(f"a {runner} cocoon needs an image")
        registry = self.settings.registry or os.environ.get("COCOON_REGISTRY")
        if registry:
            image = f"{registry.rstrip('/')}/{image}"
        return {"runner": {"type": runner, runner: {"image": image, "environment": env}},
                "restart": "on-failure"}

    async def _ensure_source(self) -> None:
        if self._source_ready:
            return
        if SOURCE not in [s.name for s in await self.client.list_sources()]:
            home = (await self.client.status()).home or "."
            await self.client.add_source(Path(home) / f"{SOURCE}.db", name=SOURCE)
        self._source_ready = True

    async def _terminate(self, message: dict[str, Any]) -> None:
        cocoon_id = str(message.get("cocoon_id") or "")
        answer: dict[str, Any] = {"type": "terminate_cocoon_result", "request_id": message.get("request_id"),
                                  "cocoon_id": cocoon_id}
        try:
            await self._remove(f"{SOURCE}:cocoon-{cocoon_id}")
        except HiveError as exc:
            answer.update(ok=False, error=str(exc))
        else:
            answer.update(ok=True)
        await self._send(answer)

    async def _remove(self, fqn: str) -> None:
        await self.client.stop_service(fqn)
        await self.client.delete_service(fqn)
