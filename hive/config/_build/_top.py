"""The file's top level: its keys, ``defaults``, and the sections it shares with services."""

from __future__ import annotations

import re
from typing import Any

from .._issues import KeyPath
from .._model import EnvironmentSpec, HiveConfig, HooksSpec, ObservabilitySpec, ProxySettings
from ._services import Services

__all__ = ["TOP_LEVEL_KEYS", "TopLevel"]

_PLUGIN_ID_RE = re.compile(r"^hive\.(parse|runner|env|health|rollout|proxy|obs)\.[A-Za-z0-9_.-]+$")

TOP_LEVEL_KEYS = (
    "version",
    "registry_url",
    "defaults",
    "proxy",
    "environment",
    "observability",
    "hooks",
    "services",
)


class TopLevel(Services):
    """The whole file. State: decoder, sink, root, defaults (set from the file's own),
    built_services."""

    def config(self, data: dict[str, Any]) -> HiveConfig | None:
        start = self._error_count()
        self.defaults = self.defaults_section(data.get("defaults"))
        for key in data:
            if key not in TOP_LEVEL_KEYS and not key.startswith("x-"):
                self.decoder.warn_unknown_key((key,), TOP_LEVEL_KEYS)
        registry_url = None
        if data.get("registry_url") is not None:
            registry_url = self.decoder.decode(data["registry_url"], str, ("registry_url",))
        environment = self.environment(data.get("environment"), ("environment",), None)
        proxy = self.proxy_settings(data.get("proxy"), ("proxy",))
        observability = None
        if data.get("observability") is not None:
            observability = self.decoder.decode(
                data["observability"], ObservabilitySpec, ("observability",)
            )
        hooks = self.hooks(data.get("hooks"), ("hooks",), self.root)
        services = self.built_services
        if "services" not in data:
            self.sink.error(("services",), "'services' is required")
        elif self._expect_mapping(data["services"], ("services",), "a mapping of services"):
            for name, entry in data["services"].items():
                service = self.service(name, entry)
                if service is not None:
                    services[name] = service
        if self._error_count() > start:
            return None
        return HiveConfig(
            version="1",
            registry_url=registry_url,
            defaults=dict(self.defaults),
            proxy=proxy or ProxySettings(),
            environment=environment or EnvironmentSpec(),
            observability=observability,
            hooks=hooks or HooksSpec(),
            services=services,
        )

    def defaults_section(self, value: Any) -> dict[str, dict[str, Any]]:
        path: KeyPath = ("defaults",)
        if value is None:
            return {}
        if not self._expect_mapping(value, path, "a mapping of plugin ids to settings"):
            return {}
        result: dict[str, dict[str, Any]] = {}
        for plugin_id, settings in value.items():
            if _PLUGIN_ID_RE.match(plugin_id) is None:
                self.sink.warning(
                    (*path, plugin_id),
                    f"'{plugin_id}' is not a plugin id of the form hive.<category>.<type> "
                    "(category: parse, runner, env, health, rollout, proxy, obs)",
                )
            if settings is None:
                continue
            if self._expect_mapping(settings, (*path, plugin_id)):
                result[plugin_id] = settings
        return result
