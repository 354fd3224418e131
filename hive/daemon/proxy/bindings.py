"""Where the proxy listens besides ``[proxy] listen``: a hive.yaml's ``proxy.bind``, with
its ``proxy.ssl`` (docs/proxy.md, "Listeners and TLS").

A file's ``bind`` is listened on when it is not the default (``127.0.0.1:8080``) or when
the file has ``ssl``; every route is served on every listener (one daemon, one route
table: host and path choose). ``ssl: {type: files}`` makes those addresses speak TLS
with the file's certificate; ``{type: internal}`` is Caddy's local CA (Caddy backend).
An address of ``[proxy] listen`` stays as config.toml says.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from hive.config import HiveConfig, PluginSpec, ProxySettings

__all__ = ["Binding", "bindings", "server_context"]

log = logging.getLogger("hive.proxy")

_DEFAULT_BIND = ProxySettings().bind


@dataclass(frozen=True)
class Binding:
    address: str  # HOST:PORT
    ssl: PluginSpec | None  # None: plain HTTP
    source: str  # the file that asked for it (for messages)


def bindings(projects: Iterable[tuple[str, HiveConfig]], listen: Iterable[str]) -> dict[str, Binding]:
    """The extra listeners of the projects ``(source, config)``; the first file to name
    an address decides its TLS."""
    plain = set(listen)
    found: dict[str, Binding] = {}
    for source, config in projects:
        settings = config.proxy
        if settings.bind == _DEFAULT_BIND and settings.ssl is None:
            continue
        for address in settings.bind:
            if address in plain:
                if settings.ssl is not None:
                    log.warning("proxy: %s: proxy.ssl: %s is [proxy] listen in config.toml (plain HTTP); "
                                "give proxy.bind another address for TLS", source, address)
                continue
            binding = Binding(address, settings.ssl if settings.ssl and not settings.ssl.skip else None, source)
            if address in found and found[address].ssl != binding.ssl:
                log.warning("proxy: %s: proxy.bind %s is %s's, with other TLS settings: %s's apply",
                            source, address, found[address].source, found[address].source)
                continue
            found.setdefault(address, binding)
    return found


def server_context(spec: PluginSpec) -> ssl.SSLContext:
    """The embedded proxy's TLS for ``ssl: {type: files}``; raises ValueError with what
    to do for a type it cannot serve, OSError/SSLError for unusable files."""
    if spec.type != "files":
        raise ValueError(f"ssl type '{spec.type}' needs [proxy] backend = \"caddy\"; "
                         "the embedded proxy takes {type: files, files: {cert, key}}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(spec.config["cert"], spec.config["key"])
    context.set_alpn_protocols(["http/1.1"])
    return context
