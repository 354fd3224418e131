"""The proxy: its global settings (bind, dns, ssl), plugin specs, and a service's endpoints."""

from __future__ import annotations

from typing import Any

import msgspec

from .._decode import describe, did_you_mean
from .._dns import parse_dns_upstream
from .._issues import KeyPath
from .._model import (
    PROXY_PLUGIN_BLOCKS,
    SSL_BLOCKS,
    PluginSpec,
    ProxyDns,
    ProxyEndpoint,
    ProxySettings,
    RolloutSpec,
)
from ._blocks import stray_key_hint
from ._common import BuilderBase, TemplateScope

__all__ = ["Proxy"]


class _ProxyGlobalFields(msgspec.Struct, kw_only=True):
    bind: str | list[str] = "127.0.0.1:8080"
    dns: ProxyDns | None = None
    show_error_logs: bool = True
    debug: bool = False


class Proxy(BuilderBase):
    """``proxy:`` at the top and in a service. State: decoder, sink, root."""

    def proxy_settings(self, value: Any, path: KeyPath) -> ProxySettings | None:
        if value is None:
            return ProxySettings()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        plain = {key: item for key, item in value.items() if key not in ("ssl", "plugins")}
        fields = self.decoder.decode(plain, _ProxyGlobalFields, path, extra_keys=("ssl", "plugins"))
        ssl = None
        if value.get("ssl") is not None:
            ssl = self.ssl_spec(value["ssl"], (*path, "ssl"))
        plugins = self.plugin_list(value.get("plugins"), (*path, "plugins"))
        if fields is not None and fields.dns is not None and fields.dns.upstream is not None:
            try:
                parse_dns_upstream(fields.dns.upstream)
            except ValueError as exc:
                self.sink.error((*path, "dns", "upstream"), str(exc))
        if fields is None or self._error_count() > start:
            return None
        bind = [fields.bind] if isinstance(fields.bind, str) else list(fields.bind)
        return ProxySettings(
            bind=bind,
            ssl=ssl,
            dns=fields.dns,
            plugins=plugins or [],
            show_error_logs=fields.show_error_logs,
            debug=fields.debug,
        )

    def ssl_spec(self, value: Any, path: KeyPath) -> PluginSpec | None:
        """``{type: files, files: {cert, key}}`` (paths from the project's root) or
        ``{type: internal}``."""
        spec = self.plugin_spec(value, path, "ssl")
        if spec is None:
            return None
        if spec.type not in SSL_BLOCKS:
            self.sink.error((*path, "type"), f"unknown ssl type '{spec.type}'{did_you_mean(spec.type, SSL_BLOCKS)}"
                            f" (known: {', '.join(SSL_BLOCKS)})")
            return None
        if spec.type == "files":
            config = {key: self._resolve(self.root, str(spec.config[key]), (*path, "files", key))
                      for key in ("cert", "key")}
            return PluginSpec(type=spec.type, config=config, skip=spec.skip)
        return spec

    def plugin_spec(self, value: Any, path: KeyPath, category: str = "proxy") -> PluginSpec | None:
        """A proxy/ssl plugin: `{type: X, X: {...}, skip: bool}`."""
        if not self._expect_mapping(value, path, "a mapping like {type: X, X: {...}}"):
            return None
        type_name = value.get("type")
        if not isinstance(type_name, str) or not type_name:
            self.sink.error((*path, "type"), "'type' is required")
            return None
        for key in value:
            if key not in ("type", type_name, "skip"):
                hint = stray_key_hint(key, type_name, category) or did_you_mean(key, ("type", "skip"))
                self.sink.warning((*path, key), f"unknown key '{key}'{hint}")
        config = value.get(type_name)
        if config is None:
            config = {}
        elif not self._expect_mapping(config, (*path, type_name)):
            return None
        skip = value.get("skip", False)
        if not isinstance(skip, bool):
            self.sink.error(
                (*path, "skip"), f"expected a boolean (true/false), got {describe(skip)}"
            )
            return None
        block = {"proxy": PROXY_PLUGIN_BLOCKS, "ssl": SSL_BLOCKS}.get(category, {}).get(type_name)
        if block is not None and self.decoder.decode(config, block, (*path, type_name)) is None:
            return None
        return PluginSpec(type=type_name, config=config, skip=skip)

    def plugin_list(self, value: Any, path: KeyPath) -> list[PluginSpec] | None:
        if value is None:
            return []
        if not isinstance(value, list):
            self.sink.error(path, f"expected a list, got {describe(value)}")
            return None
        specs = [self.plugin_spec(item, (*path, index)) for index, item in enumerate(value)]
        return [spec for spec in specs if spec is not None] if None not in specs else None

    def proxy_endpoints(
        self,
        value: Any,
        path: KeyPath,
        rollout: RolloutSpec | None,
        scope: TemplateScope,
    ) -> list[ProxyEndpoint] | None:
        if value is None:
            return []
        entries = self._one_or_many(value, path, "an endpoint")
        if entries is None:
            return None
        endpoints = [
            self.proxy_endpoint(item, item_path, rollout, scope) for item, item_path in entries
        ]
        if None in endpoints:
            return None
        return [endpoint for endpoint in endpoints if endpoint is not None]

    def proxy_endpoint(
        self, value: Any, path: KeyPath, rollout: RolloutSpec | None, scope: TemplateScope
    ) -> ProxyEndpoint | None:
        if not self._expect_mapping(value, path, "an endpoint mapping (host, path, port)"):
            return None
        start = self._error_count()
        plain = {key: item for key, item in value.items() if key != "plugins"}
        if plain.get("path") is None:
            self.sink.error((*path, "path"), "Path is required")
            plain["path"] = "/"  # reported; decode the rest for its own errors
        endpoint = self.decoder.decode(plain, ProxyEndpoint, path, extra_keys=("plugins",))
        plugins = self.plugin_list(value.get("plugins"), (*path, "plugins"))
        if endpoint is not None:
            if endpoint.path == "":
                self.sink.error((*path, "path"), "Path is required")
            elif not endpoint.path.startswith("/"):
                self.sink.error((*path, "path"), "Path must start with '/'")
            if endpoint.host is not None and endpoint.host.lower().startswith(
                ("http://", "https://")
            ):
                self.sink.error(
                    (*path, "host"), "Host must not include protocol (no http:// or https://)"
                )
        if endpoint is None or plugins is None or self._error_count() > start:
            return None
        port = endpoint.port
        if port:
            self._check_port_reference(port, (*path, "port"), scope)
        elif rollout is not None:
            port = self._default_proxy_port(rollout, path)
        if self._error_count() > start:
            return None
        return msgspec.structs.replace(endpoint, port=port, plugins=plugins)

    def _default_proxy_port(self, rollout: RolloutSpec, path: KeyPath) -> str:
        """An endpoint without `port` routes to the `http` port, or to the only port."""
        if "http" in rollout.ports:
            return "{{runtime.port.http}}"
        if len(rollout.ports) == 1:
            return f"{{{{runtime.port.{next(iter(rollout.ports))}}}}}"
        names = ", ".join(rollout.ports) or "none"
        self.sink.error(
            (*path, "port"), f"'port' is required: the service has no 'http' port (ports: {names})"
        )
        return ""
