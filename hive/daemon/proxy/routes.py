"""The route table: which service a request's host and path go to.

Matching (hive.yaml's rule): routes of the request's host first, then host-less ones;
within each, the longest path prefix, on a segment boundary (``/api`` takes ``/api`` and
``/api/x``, never ``/apix``); a trailing ``/`` is ignored. ``/cocoon/{id}/*`` goes to the
signaling plugin's service ``cocoons:cocoon-{id}`` (its prefix stripped).

A table is immutable: a reload builds a new one and swaps the reference, so a request
already matched keeps its route, and the next request on the same connection sees the new
table. Which instances serve a route's service is looked up per request
(:mod:`.upstreams`), not stored here: instances come and go without a rebuild.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from hive.config import PluginSpec, ProxyHeaders, ServiceConfig

from .plugins import Chain, build_chain

__all__ = ["COCOON_PREFIX", "COCOON_SOURCE", "Route", "RouteTable", "cocoon_route", "port_name"]

COCOON_SOURCE = "cocoons"
COCOON_PREFIX = "/cocoon/"


def port_name(reference: str) -> str:
    """``{{runtime.port.http}}`` -> ``http``; digits stay digits; ``""`` (any port) stays."""
    if reference.startswith("{{runtime.port.") and reference.endswith("}}"):
        return reference[len("{{runtime.port.") : -2]
    return reference


def _normal_path(path: str) -> str:
    """``/api/`` -> ``/api``; ``/`` -> ``""`` (every path is under it)."""
    return path.rstrip("/")


@dataclass(frozen=True, slots=True)
class Route:
    service: str  # fqn
    path: str  # normalised: no trailing '/', "" for the root
    host: str | None = None  # lower case, no port
    port: str = ""  # a port name, digits, or "" (the http port, else the only one)
    strip_prefix: bool = False
    timeout: float = 60.0  # for the response's head
    buffer_size: int = 1024 * 1024  # request bytes held while an instance is connected
    headers: ProxyHeaders = field(default_factory=ProxyHeaders)
    chain: Chain = field(default_factory=lambda: Chain([]), compare=False)
    debug: bool = False  # its file has proxy.debug: each request is logged

    def covers(self, path: str) -> bool:
        prefix = self.path
        return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] in "/?")

    def upstream_target(self, target: str) -> str:
        """The request target the instance gets (``strip_prefix`` keeps a leading ``/``)."""
        if not self.strip_prefix or not self.path:
            return target
        rest = target[len(self.path) :]
        if not rest or rest[0] == "?":
            return "/" + rest
        return rest


def _service_routes(fqn: str, config: ServiceConfig, global_plugins: list[PluginSpec],
                    chains: dict[tuple[str, str | None, str], Chain]) -> list[Route]:
    return [
        Route(
            service=fqn,
            path=_normal_path(endpoint.path),
            host=endpoint.host.lower() if endpoint.host else None,
            port=port_name(endpoint.port),
            strip_prefix=endpoint.strip_prefix,
            timeout=endpoint.timeout,
            buffer_size=endpoint.buffer_size,
            headers=endpoint.headers,
            chain=build_chain(global_plugins, endpoint.plugins, f"{fqn} {endpoint.path}",
                              chains.get((fqn, endpoint.host.lower() if endpoint.host else None,
                                          _normal_path(endpoint.path)))),
        )
        for endpoint in config.proxy
    ]


class RouteTable:
    def __init__(self, routes: Iterable[Route] = (), cocoons: bool = False) -> None:
        self.routes = list(routes)
        # Whether a cocoons source exists: then /cocoon/{id}/* is routed too.
        self.cocoons = cocoons
        self._by_host: dict[str, list[Route]] = {}
        self._any: list[Route] = []
        for route in sorted(self.routes, key=lambda r: len(r.path), reverse=True):
            if route.host is None:
                self._any.append(route)
            else:
                self._by_host.setdefault(route.host, []).append(route)

    @classmethod
    def build(cls, services: Iterable[tuple[str, str, ServiceConfig, list[PluginSpec]]],
              previous: RouteTable | None = None, debug_sources: Collection[str] = ()) -> RouteTable:
        """From ``(fqn, source, config, the file's global proxy plugins)`` of every service;
        the first of two services with the same route wins (validation refuses that
        within a source). A route's plugins in ``previous`` are kept if unchanged."""
        chains = {(r.service, r.host, r.path): r.chain for r in previous.routes} if previous else {}
        routes: list[Route] = []
        seen: set[tuple[str | None, str]] = set()
        cocoons = False
        for fqn, source, config, global_plugins in services:
            cocoons = cocoons or source == COCOON_SOURCE
            for route in _service_routes(fqn, config, global_plugins, chains):
                if (route.host, route.path) not in seen:
                    seen.add((route.host, route.path))
                    routes.append(replace(route, debug=True) if source in debug_sources else route)
        return cls(routes, cocoons)

    def ordered(self) -> list[Route]:
        """The routes in the order :meth:`match` tries them (host routes first, each
        group longest path first): a backend that matches in order matches the same."""
        return [route for routes in self._by_host.values() for route in routes] + self._any

    def __bool__(self) -> bool:
        return bool(self.routes) or self.cocoons

    def match(self, host: str, target: str) -> Route | None:
        """The route for a ``Host`` header and a request target (path and query)."""
        if self.cocoons and target.startswith(COCOON_PREFIX):
            return _cocoon_route(target)
        if self._by_host:
            for route in self._by_host.get(_host_name(host), ()):
                if route.covers(target):
                    return route
        for route in self._any:
            if route.covers(target):
                return route
        return None


def _host_name(host: str) -> str:
    """``Example.com:8080`` -> ``example.com``; ``[::1]:8080`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.partition(":")[0].lower()


def _cocoon_route(target: str) -> Route | None:
    rest = target[len(COCOON_PREFIX) :]
    end = len(rest)
    for stop in "/?":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    cocoon_id = rest[:end]
    if not cocoon_id:
        return None
    return cocoon_route(cocoon_id)


def cocoon_route(cocoon_id: str) -> Route:
    """The route of ``/cocoon/{cocoon_id}/*`` (its prefix stripped)."""
    return Route(
        service=f"{COCOON_SOURCE}:cocoon-{cocoon_id}",
        path=COCOON_PREFIX + cocoon_id,
        strip_prefix=True,
    )
