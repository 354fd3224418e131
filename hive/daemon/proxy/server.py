"""The proxy as a part of the daemon: when it listens, and what it routes.

It listens (``[proxy] listen`` in config.toml) from the moment a source declares a route
or the signaling plugin's ``cocoons`` source exists, and goes on until the daemon stops.
The route table is rebuilt from the services' configs after each source event (added,
removed, reloaded) and whenever a service it does not know yet changes state (a SQLite
source's new service); the new table replaces the old one in one assignment, so no
connection, and no request in flight, notices a reload. A changed ``listen`` opens the new
addresses and closes the old listeners; their open connections finish.

With ``[proxy] backend = "caddy"`` the daemon does not listen itself: a caddy it starts
(:mod:`.caddy`) gets the routes and the instances that are up, again after each change.

Shutdown: the listeners close, idle connections close, requests under way get a grace
period (``drain``), then what is left is cut.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from hive_client import Event

from ..dns import DnsServer, dns_wanted
from ..settings import ProxySection, split_host_port
from . import pages
from .bindings import Binding, bindings, server_context
from .caddy import CaddyBackend
from .caddy_config import caddy_document
from .client import ClientConnection
from .core import ProxyCore
from .plugins import Cors
from .routes import RouteTable
from .upstream import Pool
from .upstreams import Upstreams

if TYPE_CHECKING:
    from ..app import App
    from ..supervision import ServiceRuntime

__all__ = ["ProxyServer"]

log = logging.getLogger("hive.proxy")

_TABLE_EVENTS = ("source_added", "source_removed", "source_changed", "service_state_changed", "daemon_reloaded")
# Caddy gets the instances that are up with the routes: these change them.
_CADDY_EVENTS = (*_TABLE_EVENTS, "rollout_started", "rollout_switched", "rollout_drained",
                 "rollout_rolled_back", "rollout_completed", "service_health_changed")


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
        self.errors: dict[str, str] = {}  # address -> why it does not listen there
        self.caddy: CaddyBackend | None = None
        if app.settings.proxy.backend == "caddy":
            self.caddy = CaddyBackend(app.home.root / "caddy", app.settings.proxy, self._caddy_document)
        self._caddy_started = False
        self._tasks: anyio.abc.TaskGroup | None = None  # run()'s: caddy runs in it
        self.bindings: dict[str, Binding] = {}  # the files' proxy.bind (with their ssl)
        self._bound: dict[str, Binding | None] = {}  # what each open listener was opened for
        self.dns = DnsServer(app.settings.proxy.dns)  # listens while a file enables proxy.dns

    @property
    def addresses(self) -> list[str]:
        if self.caddy is not None:
            return [*self.core.settings.listen, *self.bindings] if self._caddy_started and self.caddy.error is None else []
        return list(self._servers)

    @property
    def problems(self) -> list[str]:
        """Why it does not listen where it should (for ``hive status``)."""
        caddy = [self.caddy.error] if self.caddy is not None and self.caddy.error else []
        return [*self.errors.values(), *caddy]

    @property
    def traffic(self) -> CaddyBackend | Pool:
        """What a blue-green drain waits on: the in-flight counts of whoever proxies."""
        return self.caddy if self.caddy is not None else self.core.pool

    def _caddy_document(self, admin_socket: str) -> dict[str, object]:
        return caddy_document(admin_socket=admin_socket, settings=self.core.settings, table=self.core.table,
                              services=self.app.services.services, report=self._report, bindings=self.bindings)

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
        kinds = _CADDY_EVENTS if self.caddy is not None else _TABLE_EVENTS
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            with self.app.bus.subscribe(kinds=kinds, maxlen=4096) as events:
                await self.refresh()
                task_status.started()
                async for event in events:
                    if self._changes_table(event):
                        await self.refresh()
                    elif self.caddy is not None:
                        self.caddy.update()

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
            debug_sources={s.source for s in services if s.project is not None and s.project.proxy.debug},
        )
        self._known = {s.fqn: s.config for s in services}
        if not self.core.table:
            await self._apply_dns()
            if self.caddy is not None and self._caddy_started:
                self.caddy.update()  # the last routes went: caddy answers 404
            return
        self.bindings = bindings(((s.source, s.project) for s in services if s.project is not None),
                                 self.core.settings.listen)
        if self.caddy is None:
            await self._listen()
            await self._apply_dns()  # once the proxy its answers point to listens
            return
        await self._apply_dns()
        if any(not isinstance(plugin, Cors) for route in self.core.table.routes for plugin in route.chain.plugins):
            log.warning("proxy: the caddy backend applies no proxy plugin but cors (not rate-limit, "
                        "nor one of your own); use backend = \"embedded\" for them")
        if not self._caddy_started and self._tasks is not None:
            self._caddy_started = True
            await self._tasks.start(self.caddy.run)
        else:
            self.caddy.update()

    async def reconfigure(self, settings: ProxySection) -> None:
        """A reload's new ``[proxy]``: limits apply to the next request; a changed
        ``listen`` moves the listeners (connections on the old ones finish)."""
        self.core.settings = settings
        await self._apply_dns()
        if self.caddy is not None:
            if settings.backend != "caddy" or settings.caddy_command != self.caddy.settings.caddy_command:
                log.warning("proxy: a changed [proxy] backend or caddy_command applies when the daemon restarts")
            self.caddy.update()  # a changed listen or timeout is a new document
            return
        if self._servers:
            await self._listen()

    async def _apply_dns(self) -> None:
        """The DNS responder follows the files' ``proxy.dns`` and the route hosts."""
        settings = self.core.settings
        projects = [(s.name, s.config) for s in self.app.sources.sources.values() if s.config is not None]
        enabled, upstream, notes = dns_wanted(projects, settings.dns.upstream)
        await self.dns.apply(enabled=enabled, settings=settings.dns, upstream=upstream,
                             hosts={route.host for route in self.core.table.routes if route.host},
                             listen=[*settings.listen, *self.bindings], notes=notes)

    async def _listen(self) -> None:
        """Listen on ``[proxy] listen`` and the files' ``bind``; stop listening elsewhere.
        A listener whose TLS settings changed is opened again (a renewed certificate)."""
        wanted: dict[str, Binding | None] = dict.fromkeys(self.core.settings.listen)
        for address, binding in self.bindings.items():
            wanted.setdefault(address, binding)
        for address in [a for a in self._servers if a not in wanted or self._bound.get(a) != wanted[a]]:
            self._servers.pop(address).close()
            self._bound.pop(address, None)
            log.info("proxy: no longer listening on %s", address)
        for address in [a for a in self.errors if a not in wanted]:
            del self.errors[address]
        for address, wanted_binding in wanted.items():
            if address not in self._servers:
                await self._open(address, wanted_binding)

    async def _open(self, address: str, binding: Binding | None) -> None:
        fix = f"set proxy.bind in {binding.source}'s hive.yaml" if binding else "set [proxy] listen in config.toml"
        context = None
        if binding is not None and binding.ssl is not None:
            try:
                context = server_context(binding.ssl)
            except ValueError as exc:
                self._failed(address, f"cannot serve TLS on {address}: {exc} ({binding.source})")
                return
            except (OSError, ssl.SSLError) as exc:
                self._failed(address, f"cannot serve TLS on {address}: the certificate or key of proxy.ssl: "
                                      f"{exc.strerror or exc}; fix proxy.ssl.files in {binding.source}'s hive.yaml")
                return
        proto = b"https" if context is not None else b"http"
        host, port = split_host_port(address)
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: ClientConnection(self.core, proto), host, port, backlog=1024,
                reuse_address=True, ssl=context,
            )
        except OSError as exc:
            # asyncio's message repeats the address: the errno's own words say it once.
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            self._failed(address, f"cannot listen on {address}: {why}; {fix}, then `hive reload`")
            return
        self._servers[address] = server
        self._bound[address] = binding
        self.errors.pop(address, None)
        log.info("proxy: listening on %s%s", address, " (TLS)" if context is not None else "")

    def _failed(self, address: str, error: str) -> None:
        """Kept for ``hive status``; logged once, not again at each reload that retries."""
        if self.errors.get(address) != error:
            log.error("proxy: %s", error)
        self.errors[address] = error

    async def close(self, drain: float) -> None:
        """Stop listening; let requests under way finish for up to ``drain`` seconds."""
        self.dns.close()
        if self.caddy is not None:
            await self.caddy.close()  # caddy's own grace period is the same 5 s
            return
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
