"""The Caddy backend (``[proxy] backend = "caddy"``): the daemon starts its own caddy,
keeps it running, and pushes the routes to it through caddy's admin API.

Why the daemon starts caddy rather than joining one already running: ``POST /load``
replaces a caddy's whole config, and the routes must follow the services' state (each
health change, each blue-green switch) with no one else editing the same document. A
caddy of its own, with its admin API on a Unix socket in Hive's home, is configured by
no one else, stops with the daemon, and is restarted (and given the routes again) if it
exits.

- :meth:`CaddyBackend.update`: the state changed; a pusher task loads the new document
  (:mod:`.caddy_config`) unless it is the one loaded; several changes make one load.
- :meth:`CaddyBackend.quiet`: blue-green's drain. Caddy sends no event when a request
  ends, so this is the one place the proxy polls: it loads the current state, then reads
  ``GET /reverse_proxy/upstreams`` every 50 ms until the old generation's addresses have
  no request in flight.

Caddy's own log is ``$HIVE_HOME/caddy/caddy.log``; its storage (the internal CA's keys,
certificates) is under ``$HIVE_HOME/caddy/data``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx

from ..settings import ProxySection
from .caddy_config import ADMIN_ORIGIN, DRAIN_ID, admin_config, dial

__all__ = ["CaddyBackend", "CaddyError"]

log = logging.getLogger("hive.proxy")

_READY_SECONDS = 10.0  # for caddy's admin socket to answer after a start
_STOP_SECONDS = 10.0  # for caddy to exit after /stop (it lets requests finish for 5 s)
_RESTART_DELAY = 1.0  # after an unexpected exit
_DRAIN_POLL = 0.05


class CaddyError(Exception):
    """Caddy cannot be started or refused a config."""


class CaddyBackend:
    def __init__(self, directory: Path, settings: ProxySection,
                 document: Callable[[str], dict[str, Any]]) -> None:
        """``document(admin_socket)``: the config of the current state (built on each push)."""
        self.directory = directory
        self.settings = settings
        self.socket = directory / "admin.sock"
        self._document = document
        self._process: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        self._loaded: tuple[str, set[str]] | None = None  # caddy's document: what serves, what drains
        self._wanted = 0  # update() calls so far
        self._pushed = 0  # the update() count the loaded document reflects
        self._wake = asyncio.Event()
        self._pushed_event = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._failed = False  # caddy could not be started
        self.error: str | None = None

    # --- the state changed ---------------------------------------------------------------

    def update(self) -> None:
        self._wanted += 1
        self._wake.set()

    async def synced(self) -> None:
        """Until caddy has the document of the state as of this call."""
        self.update()
        wanted = self._wanted
        while self._pushed < wanted and not self._closing and not self._failed:
            await self._pushed_event.wait()

    async def quiet(self, ports: Collection[int]) -> None:
        """Until caddy has no request in flight to ``ports`` (after it stopped routing new
        ones there): the :class:`~hive.daemon.supervision.rollout.Traffic` of a drain."""
        await self.synced()
        addresses = {dial(port) for port in ports}
        while not self._closing:
            try:
                upstreams = await self._admin("GET", "/reverse_proxy/upstreams")
            except CaddyError as exc:
                log.warning("proxy: caddy: %s; the drain runs its whole grace period", exc)
                await anyio.sleep_forever()
            if not any(u.get("num_requests") for u in upstreams or () if u.get("address") in addresses):
                return
            await anyio.sleep(_DRAIN_POLL)

    # --- running caddy -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep caddy running and loaded with the current state, until cancelled."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
                                         base_url=f"http://{ADMIN_ORIGIN}", timeout=10.0)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._push_loop)
                task_status.started()
                await self._keep_running()
                tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_SECONDS + 2):
                await self.close()
                await self._client.aclose()

    async def _keep_running(self) -> None:
        while not self._closing:
            try:
                await self._start()
            except CaddyError as exc:
                self.error = str(exc)
                self._failed = True  # no caddy: nothing waits for one
                self._pushed_event.set()
                log.error("proxy: %s", exc)
                return
            self.update()  # a new caddy has no routes yet
            process = self._process
            assert process is not None
            code = await process.wait()
            self._ready.clear()
            self._loaded = None
            if self._closing:
                return
            log.error("proxy: caddy exited with code %s (see %s); starting it again",
                      code, self.directory / "caddy.log")
            await anyio.sleep(_RESTART_DELAY)

    async def _start(self) -> None:
        command = shutil.which(self.settings.caddy_command)
        if command is None:
            raise CaddyError(f"cannot start caddy: no '{self.settings.caddy_command}' on PATH; "
                             "install it (apt-get install caddy) or set [proxy] caddy_command")
        await self._stop_leftover()
        initial = self.directory / "initial.json"
        initial.write_text(json.dumps({"admin": admin_config(str(self.socket))}))
        data = self.directory / "data"
        env = {**os.environ, "HOME": str(self.directory), "XDG_DATA_HOME": str(data),
               "XDG_CONFIG_HOME": str(self.directory / "config")}
        output = os.open(self.directory / "caddy.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._process = await asyncio.create_subprocess_exec(
                command, "run", "--config", str(initial), env=env, cwd=self.directory,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output)
        finally:
            os.close(output)
        with anyio.move_on_after(_READY_SECONDS):
            while self._process.returncode is None:
                try:
                    await self._admin("GET", "/config/")
                except CaddyError:
                    await anyio.sleep(0.02)  # no event says the socket is up
                    continue
                self._ready.set()
                log.info("proxy: caddy (pid %d) started; admin API on %s", self._process.pid, self.socket)
                return
        if self._process.returncode is None:
            self._process.kill()
        raise CaddyError(f"caddy did not start (see {self.directory / 'caddy.log'})")

    async def _stop_leftover(self) -> None:
        """A caddy a killed daemon left running still holds the socket and the ports."""
        if not self.socket.exists():
            return
        try:
            await self._admin("POST", "/stop")
            log.warning("proxy: stopped the caddy a previous daemon left running")
        except CaddyError:
            pass
        with anyio.move_on_after(_STOP_SECONDS):
            while self.socket.exists():
                try:
                    await self._admin("GET", "/config/")
                except CaddyError:
                    break
                await anyio.sleep(0.05)
        self.socket.unlink(missing_ok=True)

    async def close(self) -> None:
        """Stop caddy: it stops listening, lets requests under way finish for 5 s, exits."""
        self._closing = True
        self._pushed_event.set()
        process = self._process
        if process is None or process.returncode is not None:
            return
        try:
            await self._admin("POST", "/stop")
        except CaddyError:
            process.terminate()
        with anyio.move_on_after(_STOP_SECONDS):
            await process.wait()
            return
        process.kill()
        await process.wait()

    # --- pushing -------------------------------------------------------------------------

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._ready.wait()
            wanted = self._wanted
            document = self._document(str(self.socket))
            serving, draining = _split(document)
            # Each load closes caddy's idle client connections: a drain route that is no
            # longer needed goes with the next load that changes what serves.
            if self._loaded is None or serving != self._loaded[0] or not draining <= self._loaded[1]:
                body = json.dumps(document, sort_keys=True).encode()
                try:
                    await self._admin("POST", "/load", body)
                except CaddyError as exc:
                    self.error = str(exc)
                    log.error("proxy: caddy refused the routes: %s", exc)
                    continue
                self._loaded = (serving, draining)
                self.error = None
            self._pushed = wanted
            done, self._pushed_event = self._pushed_event, asyncio.Event()
            done.set()

    async def _admin(self, method: str, path: str, body: bytes | None = None) -> Any:
        if self._client is None:
            raise CaddyError("caddy is not started yet")
        try:
            response = await self._client.request(
                method, path, content=body, headers={"Content-Type": "application/json"} if body else None)
        except httpx.HTTPError as exc:
            raise CaddyError(f"caddy's admin API ({self.socket}): {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise CaddyError(f"caddy's admin API: {method} {path}: {response.status_code} {response.text.strip()}")
        return response.json() if response.content else None


def _split(document: dict[str, Any]) -> tuple[str, set[str]]:
    """A document as (its serving part, as JSON; the ids of its drain routes)."""
    routes = document["apps"]["http"]["servers"]["hive"]["routes"]
    draining = {r["@id"] for r in routes if str(r.get("@id", "")).startswith(DRAIN_ID)}
    serving = [r for r in routes if r.get("@id") not in draining]
    return json.dumps({**document, "apps": {"http": {**document["apps"]["http"], "servers": {
        "hive": {**document["apps"]["http"]["servers"]["hive"], "routes": serving}}}}}, sort_keys=True), draining
