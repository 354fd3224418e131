"""Proxy plugins: steps a request passes before it is forwarded.

hive.yaml names them as ``{type: X, X: {...}}`` in ``proxy.plugins`` (every route of the
file) and in an endpoint's ``plugins`` (that route: the same type replaces the global
entry, ``skip: true`` turns it off, a new type is appended). A plugin may answer a request
itself (a 429, a CORS preflight) or add headers to its response, whoever gives it: the
instance, or the proxy (its 429, 502, 503 and 504 pages; a browser reads an answer to
another origin only with the CORS headers). When a plugin answers, the plugins after it
in the chain still add their headers (:meth:`ProxyPlugin.annotate`).

Built in: ``rate-limit`` and ``cors``. A type the proxy does not know is logged once and
left out; the routes still work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from hive.config import PluginSpec

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["Chain", "Cors", "PluginError", "ProxyPlugin", "RateLimit", "Refusal", "build_chain"]

log = logging.getLogger("hive.proxy")

# An answer the proxy gives itself: status, message, extra response headers.
Refusal = tuple[int, str, list[tuple[bytes, bytes]]]


class PluginError(ValueError):
    """A plugin's settings are wrong; the message names the key."""


class ProxyPlugin(Protocol):
    def on_request(self, exchange: Exchange) -> Refusal | None:
        """None to let the request through (maybe adding ``exchange.extra_headers``)."""
        ...

    def annotate(self, exchange: Exchange) -> None:
        """An earlier plugin answers the request: add headers to that answer, if any."""
        ...


class RateLimit:
    """``rate-limit: {requests: 100, per: 1, burst: 100}``: a token bucket per client
    address; past it, 429 with ``Retry-After``."""

    _MAX_CLIENTS = 10_000  # buckets kept; the fullest go first past it

    def __init__(self, config: dict[str, Any]) -> None:
        self.requests = _number(config, "requests", 100.0)
        self.per = _number(config, "per", 1.0)
        self.burst = _number(config, "burst", self.requests)
        self.rate = self.requests / self.per
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, at)

    def on_request(self, exchange: Exchange) -> Refusal | None:
        now = time.monotonic()
        peer = exchange.client.peer
        tokens, at = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[peer] = (tokens, now)
            wait = max(1, int((1.0 - tokens) / self.rate + 0.999))
            return 429, f"over the rate limit of {self.requests:g} requests per {self.per:g} s", [
                (b"retry-after", str(wait).encode())
            ]
        if len(self._buckets) >= self._MAX_CLIENTS and peer not in self._buckets:
            self._buckets.clear()  # cheap and bounded; a full table is rare
        self._buckets[peer] = (tokens - 1.0, now)
        return None

    def annotate(self, exchange: Exchange) -> None:
        return None


class Cors:
    """``cors: {origins: ["https://app.example"], methods: [...], headers: [...],
    credentials: false, max_age: 600}``: preflights answered by the proxy, and
    ``Access-Control-Allow-Origin`` on the responses to an allowed origin."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.origins = {o.encode() for o in _strings(config, "origins", ["*"])}
        self.methods = ", ".join(_strings(config, "methods", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])).encode()
        self.headers = ", ".join(_strings(config, "headers", ["*"])).encode()
        self.credentials = bool(config.get("credentials", False))
        self.max_age = str(int(_number(config, "max_age", 600))).encode()

    def _allowed(self, origin: bytes) -> bytes | None:
        if b"*" in self.origins:
            return origin if self.credentials else b"*"
        return origin if origin in self.origins else None

    def on_request(self, exchange: Exchange) -> Refusal | None:
        origin = exchange.facts.origin
        if not origin:
            return None
        allowed = self._allowed(origin)
        if allowed is None:
            return (403, "this origin is not allowed (cors)", []) if exchange.method == b"OPTIONS" else None
        headers = self._headers(allowed)
        if exchange.method == b"OPTIONS" and exchange.facts.preflight:
            headers += [(b"access-control-allow-methods", self.methods),
                        (b"access-control-allow-headers", self.headers),
                        (b"access-control-max-age", self.max_age)]
            return 204, "", headers
        exchange.extra_headers = headers
        return None

    def annotate(self, exchange: Exchange) -> None:
        allowed = self._allowed(exchange.facts.origin) if exchange.facts.origin else None
        if allowed is not None:
            exchange.extra_headers = self._headers(allowed)

    def _headers(self, allowed: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", allowed), (b"vary", b"Origin")]
        if self.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers


BUILT_IN: dict[str, Callable[[dict[str, Any]], ProxyPlugin]] = {"rate-limit": RateLimit, "cors": Cors}


class Chain:
    def __init__(self, plugins: list[ProxyPlugin], specs: list[PluginSpec] | None = None) -> None:
        self.plugins = plugins
        self.specs = specs or []  # what it was built from: a rebuild keeps it if they are the same

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def on_request(self, exchange: Exchange) -> Refusal | None:
        for index, plugin in enumerate(self.plugins):
            refusal = plugin.on_request(exchange)
            if refusal is not None:
                for later in self.plugins[index + 1 :]:
                    later.annotate(exchange)
                return refusal
        return None


def effective(global_specs: Iterable[PluginSpec], route_specs: Iterable[PluginSpec]) -> list[PluginSpec]:
    """The global chain with the route's entries applied (replace, skip, append)."""
    chain = {spec.type: spec for spec in global_specs}
    for spec in route_specs:
        chain[spec.type] = spec
    return [spec for spec in chain.values() if not spec.skip]


def build_chain(global_specs: Iterable[PluginSpec], route_specs: Iterable[PluginSpec], where: str,
                previous: Chain | None = None) -> Chain:
    """The route's chain; ``previous`` (the route's chain in the table being replaced) is
    kept when built from the same entries, so a rate limit keeps its counts."""
    specs = effective(global_specs, route_specs)
    if previous is not None and previous.specs == specs:
        return previous
    plugins: list[ProxyPlugin] = []
    for spec in specs:
        make = BUILT_IN.get(spec.type)
        if make is None:
            log.warning("%s: proxy plugin %r is not built in; the route works without it", where, spec.type)
            continue
        try:
            plugins.append(make(spec.config))
        except PluginError as exc:
            log.error("%s: proxy plugin %r left out: %s", where, spec.type, exc)
    return Chain(plugins, specs)


def _number(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PluginError(f"{key!r} must be a positive number, got {value!r}")
    return float(value)


def _strings(config: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = config.get(key, default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PluginError(f"{key!r} must be a list of strings, got {value!r}")
    return value
