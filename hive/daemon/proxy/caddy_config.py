"""The Caddy backend's configuration: the route table and the services' instances as one
JSON document for caddy's ``POST /load`` (docs/proxy.md, "The Caddy backend").

The document is rebuilt whole from the current state and loaded whole: caddy applies a
new config atomically (a request is served by the old config or the new one, never a
mix), keeps its listeners, and lets requests under way on the old config finish. So the
blue-green switch is one load, like the embedded proxy's one assignment.

Routes keep the embedded proxy's order: host routes first, longest path first, then
host-less ones; ``/cocoon/{id}/*`` for the signaling plugin's cocoons; then a ``404``.
A service with no instance up gets a ``503`` with its state page as of this load.

A file's ``proxy.bind`` adds listeners; those with ``proxy.ssl`` are servers of their own
with TLS: the given certificate files, or caddy's local CA (``internal``).

A draining generation's addresses stay in the document, in routes after the final
``404`` that no request reaches: caddy keeps in-flight counts per upstream address only
while a loaded config names that address, and the drain reads those counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import pages
from .plugins import Cors
from .routes import COCOON_SOURCE, Route, RouteTable, cocoon_route
from .upstreams import instance_port

if TYPE_CHECKING:
    from ..settings import ProxySection
    from ..supervision import InstanceRuntime, ServiceRuntime
    from .bindings import Binding

__all__ = ["DRAIN_ID", "SERVER_NAME", "admin_config", "caddy_document", "dial"]

SERVER_NAME = "hive"
ADMIN_ORIGIN = "hive"  # the Host the daemon sends to the admin socket; caddy checks it
DRAIN_ID = "hive-drain-"  # the @id of a draining address's route
_NS = 1_000_000_000  # caddy's JSON durations are nanoseconds
_FLUSH_NS = 10_000_000
_GRACE_SECONDS = 5  # requests under way when caddy stops (as the embedded proxy's drain)

Report = Callable[[str, "ServiceRuntime | None"], pages.ServiceReport]


def dial(port: int) -> str:
    return f"127.0.0.1:{port}"


def admin_config(socket: str) -> dict[str, Any]:
    """The admin endpoint: a Unix socket in Hive's home, so only its owner reconfigures it."""
    return {"listen": f"unix/{socket}", "origins": [ADMIN_ORIGIN]}


def _match(route: Route) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if route.host is not None:
        match["host"] = [route.host]
    if route.path:
        match["path"] = [route.path, route.path + "/*"]
    return match


def _header_edits(route: Route) -> list[dict[str, Any]]:
    edits = route.headers
    if not (edits.remove or edits.set or edits.add):
        return []
    request: dict[str, Any] = {}
    if edits.remove:
        request["delete"] = list(edits.remove)
    if edits.set:
        request["set"] = {name: [value] for name, value in edits.set.items()}
    if edits.add:
        request["add"] = {name: [value] for name, value in edits.add.items()}
    return [{"handler": "headers", "request": request}]


def _page(status: int, message: str, detail: pages.ServiceReport | None) -> list[dict[str, Any]]:
    """A static answer with the embedded proxy's page: JSON for an ``Accept`` that asks
    for it, else text."""
    answers = []
    for as_json in (True, False):
        body, content_type = pages.render(status, message, detail, as_json)
        answer: dict[str, Any] = {"handle": [{"handler": "static_response", "status_code": status,
                                              "body": body.decode(),
                                              "headers": {"Content-Type": [content_type.decode()]}}]}
        if as_json:
            answer["match"] = [{"header": {"Accept": ["*json*"]}}]
        answers.append(answer)
    return [{"handler": "subroute", "routes": answers}]


def _cors(cors: Cors) -> list[dict[str, Any]]:
    """The ``cors`` plugin as caddy handlers, as the embedded proxy applies it: a preflight
    from an allowed origin is answered 204; an OPTIONS from another origin 403; a
    request from an allowed origin gets ``Access-Control-Allow-Origin`` (the instance's
    own replaced) and ``Vary: Origin`` on its answer."""
    any_origin = b"*" in cors.origins
    origins = ["*"] if any_origin else sorted(origin.decode() for origin in cors.origins)
    allowed = "*" if any_origin and not cors.credentials else "{http.request.header.Origin}"
    marks = {"Access-Control-Allow-Origin": [allowed], "Vary": ["Origin"]}
    if cors.credentials:
        marks["Access-Control-Allow-Credentials"] = ["true"]
    preflight = {**marks, "Access-Control-Allow-Methods": [cors.methods.decode()],
                 "Access-Control-Allow-Headers": [cors.headers.decode()],
                 "Access-Control-Max-Age": [cors.max_age.decode()]}
    routes: list[dict[str, Any]] = [{
        "match": [{"method": ["OPTIONS"], "header": {"Origin": origins, "Access-Control-Request-Method": ["*"]}}],
        "handle": [{"handler": "static_response", "status_code": 204, "headers": preflight}],
        "terminal": True,
    }]
    if not any_origin:
        routes.append({
            "match": [{"method": ["OPTIONS"], "header": {"Origin": ["*"]}, "not": [{"header": {"Origin": origins}}]}],
            "handle": _page(403, "this origin is not allowed (cors)", None),
            "terminal": True,
        })
    routes.append({
        "match": [{"header": {"Origin": origins}}],
        "handle": [{"handler": "headers", "response": {
            "set": {"Access-Control-Allow-Origin": [allowed],
                    **({"Access-Control-Allow-Credentials": ["true"]} if cors.credentials else {})},
            "add": {"Vary": ["Origin"]},
            "deferred": True,  # after the instance's answer: its own CORS header is replaced
        }}],
    })
    return [{"handler": "subroute", "routes": routes}]


def _reverse_proxy(ports: Iterable[int], settings: ProxySection, timeout: float) -> dict[str, Any]:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial(port)} for port in ports],
        # A streamed body's pieces reach the client within 10 ms. (-1, "at once", makes
        # caddy 2.6 treat the response as a stream it cuts when a config is unloaded.)
        "flush_interval": _FLUSH_NS,
        # A refused connect moves on to the next instance, for up to connect_timeout.
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": int(settings.connect_timeout * _NS),
        },
        "transport": {
            "protocol": "http",
            "dial_timeout": int(settings.connect_timeout * _NS),
            "response_header_timeout": int(timeout * _NS),
        },
    }


def _unavailable(route: Route, service: ServiceRuntime | None, report: Report) -> list[dict[str, Any]]:
    """The 503 page of a service with no instance up."""
    message = f"service {route.service} has no instance up" if service is not None \
        else f"no service {route.service}"
    return _page(503, message, report(route.service, service))


def _handlers(route: Route, service: ServiceRuntime | None, settings: ProxySection,
              report: Report) -> list[dict[str, Any]]:
    ports = [port for instance in (service.instances if service else ()) if instance.up
             and (port := instance_port(instance, route.port)) is not None]
    if not ports:
        return _unavailable(route, service, report)
    handlers = _header_edits(route)
    for plugin in route.chain.plugins:
        if isinstance(plugin, Cors):  # (rate-limit has no caddy handler: the daemon warns)
            handlers += _cors(plugin)
    if route.strip_prefix and route.path:
        handlers.append({"handler": "rewrite", "strip_path_prefix": route.path})
    handlers.append(_reverse_proxy(ports, settings, route.timeout))
    return handlers


def _draining(services: Iterable[ServiceRuntime], routes: list[Route]) -> list[dict[str, Any]]:
    """Unreachable routes naming each draining instance's addresses (see the module doc)."""
    ports: set[int] = set()
    for service in services:
        retiring: list[InstanceRuntime] = [i for i in service.retiring if i.live]
        for route in routes:
            if route.service == service.fqn:
                ports.update(p for i in retiring if (p := instance_port(i, route.port)) is not None)
    return [{"@id": f"{DRAIN_ID}{p}", "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": dial(p)}]}]}
            for p in sorted(ports)]


def _tls(bindings: Mapping[str, Binding], routes: list[Route], json_routes: list[dict[str, Any]],
         server: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The files' ``bind``: plain ones join ``server``; each TLS setting is a server of its
    own. Returns those servers and caddy's ``tls`` app."""
    servers: dict[str, dict[str, Any]] = {}
    load_files: list[dict[str, Any]] = []
    automate: set[str] = set()
    by_spec: dict[str, list[str]] = {}
    for address, binding in bindings.items():
        if binding.ssl is None:
            server["listen"].append(address)
            continue
        by_spec.setdefault(json.dumps([binding.ssl.type, binding.ssl.config], sort_keys=True), []).append(address)
        if binding.ssl.type == "files":
            entry = {"certificate": binding.ssl.config["cert"], "key": binding.ssl.config["key"]}
            if entry not in load_files:
                load_files.append(entry)
        else:  # internal: caddy's local CA issues a certificate per host name
            automate.update({"localhost", *(r.host for r in routes if r.host is not None)})
    for number, addresses in enumerate(by_spec.values()):
        servers[f"{SERVER_NAME}-tls-{number}"] = {
            "listen": addresses, "routes": json_routes, "tls_connection_policies": [{}],
            "automatic_https": {"disable": True},  # no ACME, no redirect server on :80
        }
    tls: dict[str, Any] = {}
    if load_files:
        tls.setdefault("certificates", {})["load_files"] = load_files
    if automate:
        tls.setdefault("certificates", {})["automate"] = sorted(automate)
        tls["automation"] = {"policies": [{"issuers": [{"module": "internal"}]}]}
    return servers, tls


def caddy_document(*, admin_socket: str, settings: ProxySection, table: RouteTable,
                   services: Mapping[str, ServiceRuntime], report: Report,
                   bindings: Mapping[str, Binding] | None = None) -> dict[str, Any]:
    """The whole config for ``POST /load``."""
    routes = table.ordered()
    if table.cocoons:
        routes += [cocoon_route(fqn.partition(":cocoon-")[2])
                   for fqn, s in services.items() if s.source == COCOON_SOURCE and ":cocoon-" in fqn]
        routes.sort(key=lambda r: r.service.startswith(f"{COCOON_SOURCE}:cocoon-"), reverse=True)
    json_routes: list[dict[str, Any]] = []
    for route in routes:
        json_route: dict[str, Any] = {
            "handle": _handlers(route, services.get(route.service), settings, report), "terminal": True}
        match = _match(route)
        if match:
            json_route["match"] = [match]
        json_routes.append(json_route)
    if table.cocoons:
        json_routes.append({"match": [{"path": ["/cocoon/*"]}], "terminal": True, "handle": [
            {"handler": "static_response", "status_code": 503, "body": "503 Service Unavailable: no such cocoon\n"}]})
    json_routes.append({"handle": [{"handler": "static_response", "status_code": 404,
                                    "body": "404 Not Found: no route for {http.request.host}{http.request.uri.path}\n"}]})
    json_routes += _draining(services.values(), routes)
    server: dict[str, Any] = {
        "listen": list(settings.listen),
        "routes": json_routes,
        "automatic_https": {"disable": True},
    }
    tls_servers, tls = _tls(bindings or {}, routes, json_routes, server)
    logs: dict[str, Any] = {"default": {"level": "WARN"}}
    if any(route.debug for route in routes):  # a file's proxy.debug: caddy's access log
        for each in (server, *tls_servers.values()):
            each["logs"] = {}
        logs = {"default": {"level": "WARN", "exclude": ["http.log.access"]},
                "access": {"level": "INFO", "include": ["http.log.access"]}}
    apps: dict[str, Any] = {"http": {"grace_period": _GRACE_SECONDS * _NS,
                                     "servers": {SERVER_NAME: server, **tls_servers}}}
    if tls:
        apps["tls"] = tls
        # The local CA stays in Hive's home: caddy is not to add it to the system's trust.
        apps["pki"] = {"certificate_authorities": {"local": {"install_trust": False}}}
    return {"admin": admin_config(admin_socket), "logging": {"logs": logs}, "apps": apps}
