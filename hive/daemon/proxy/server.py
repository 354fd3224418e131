"""The proxy as a part of the daemon: when it listens, and what it routes.

It listens (``[proxy] listen`` in config.toml) from the moment a source declares a route
or the signaling plugin's ``cocoons`` source exists, and goes on until the daemon stops.
The route table is rebuilt from the services' configs after each source event (added,
removed, reloaded) and whenever a service it does not know yet changes state (a SQLite
source's new service); the new table replaces the old one in one assignment, so no
connection, and no request in flight, notices a reload. A changed ``listen`` opens the new
addresses and closes the old listeners; their open connections finish.

Shutdown: the listeners close, idle connections close, requests under way get a grace
period (``drain``), then what is left is cut.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from hive_client import Event

from ..settings import ProxySection
from . import pages
from .client import ClientConnection
from .core import ProxyCore
from .routes import RouteTable
from .upstreams import Upstreams

if TYPE_CHECKING:
    from ..app import App
    from ..supervision import ServiceRuntime

__all__ = ["ProxyServer"]

log = logging.getLogger("hive.proxy")

_TABLE_EVENTS = ("source_added", "source_removed", "source_changed", "service_state_changed", "daemon_reloaded")


class ProxyServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.core = ProxyCore(
            settings=app.settings.proxy,
            upstreams=Upstreams(app.services.services),
            report=self._report,
        )
        self._servers: dict[str, asyncio.Server] = {}
        self._known: dict[str, object] = {}  # fqn -> the config the table was built from
        self.error: str | None = None  # why it does not listen, when it should

    @property
    def addresses(self) -> list[str]:
        return list(self._servers)

    @property
    def table(self) -> RouteTable:
        return self.core.table

    def _report(self, fqn: str, service: ServiceRuntime | None) -> pages.ServiceReport:
        report = pages.service_report(fqn, service, self.app.logs, self.core.settings.error_log_lines)
        # The error page shows errors and log lines to any HTTP client: no secret values.
        secrets = self.app.sources.secrets
        report.instances, report.logs = secrets.scrub(report.instances), secrets.scrub(report.logs)
        return report

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the events that change routes, until cancelled."""
        with self.app.bus.subscribe(kinds=_TABLE_EVENTS, maxlen=4096) as events:
            await self.refresh()
            task_status.started()
            async for event in events:
                if self._changes_table(event):
                    await self.refresh()

    def _changes_table(self, event: Event) -> bool:
        fqn = getattr(event, "fqn", None)
        if fqn is None:
            return True
        service = self.app.services.services.get(fqn.partition("#")[0])
        return service is not None and self._known.get(service.fqn) is not service.config

    async def refresh(self) -> None:
        """Build the table from the services' configs; listen if it has routes."""
        services = list(self.app.services.services.values())
        self.core.table = RouteTable.build(
            ((s.fqn, s.source, s.config, list(s.project.proxy.plugins) if s.project else [])
             for s in services),
            previous=self.core.table,
        )
        self._known = {s.fqn: s.config for s in services}
        if self.core.table:
            await self._listen(self.core.settings.listen)

    async def reconfigure(self, settings: ProxySection) -> None:
        """A reload's new ``[proxy]``: limits apply to the next request; a changed
        ``listen`` moves the listeners (connections on the old ones finish)."""
        self.core.settings = settings
        if self._servers and set(settings.listen) != set(self._servers):
            await self._listen(settings.listen)

    async def _listen(self, addresses: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for address in addresses:
            if address in self._servers:
                continue
            host, _, port = address.rpartition(":")
            try:
                server = await loop.create_server(
                    lambda: ClientConnection(self.core), host.strip("[]"), int(port), backlog=1024,
                    reuse_address=True,
                )
            except OSError as exc:
                self.error = f"cannot listen on {address}: {exc.strerror or exc}; set [proxy] listen in config.toml"
                log.error("proxy: %s", self.error)
                continue
            self._servers[address] = server
            self.error = None
            log.info("proxy: listening on %s", address)
        for address in [a for a in self._servers if a not in addresses]:
            self._servers.pop(address).close()
            log.info("proxy: no longer listening on %s", address)

    async def close(self, drain: float) -> None:
        """Stop listening; let requests under way finish for up to ``drain`` seconds."""
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        for connection in list(self.core.connections):
            connection.close_when_idle()  # a busy one closes after its response
        if self.core.connections:
            self.core.all_closed = asyncio.Event()
            with anyio.move_on_after(drain):
                await self.core.all_closed.wait()
        for connection in list(self.core.connections):
            connection.abort()
        self.core.pool.close()
