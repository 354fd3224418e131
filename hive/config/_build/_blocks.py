"""The ``{type: X, X: {...}}`` pattern of runners, rollouts and health checks, and the types
each of those categories knows."""

from __future__ import annotations

from typing import Any

from .._decode import describe, did_you_mean
from .._issues import KeyPath
from .._model import SSL_BLOCKS
from .._runners import installed_runners
from ._common import BuilderBase

__all__ = ["HEALTH_TYPES", "PROXY_PLUGIN_TYPES", "ROLLOUT_TYPES", "TypedBlocks", "stray_key_hint"]

ROLLOUT_TYPES = ("recreate", "blue-green")
HEALTH_TYPES = ("http", "tcp", "cmd", "postgres", "mysql", "redis", "grpc")
# Hive's proxy plugins: hint candidates (rate-limit and cors are built in: PROXY_PLUGIN_BLOCKS).
PROXY_PLUGIN_TYPES = (
    "auth-api-key", "auth-basic", "auth-jwt", "auth-oidc", "cache", "compress", "cors",
    "headers", "ip-filter", "rate-limit", "rewrite",
)
_RUNNER_PLUGIN_HELP = (
    "a runner plugin is a Python package that registers the name in the 'hive.runners' "
    "entry-point group: pip install it into Hive's environment (docs/runners.md)"
)


def _unknown_type(category: str, type_name: str) -> str | None:
    """Why ``type_name`` cannot be used as a ``category`` type, or None if it can."""
    if category == "runner":
        known = installed_runners(type_name)
        if type_name in known:
            return None
        return (f"unknown runner type '{type_name}'{did_you_mean(type_name, known)}: the installed "
                f"runners are {', '.join(known)}; {_RUNNER_PLUGIN_HELP}")
    if category == "rollout":
        if type_name in ROLLOUT_TYPES:
            return None
        return (f"unknown rollout type '{type_name}'{did_you_mean(type_name, ROLLOUT_TYPES)}: "
                f"Hive has {' and '.join(ROLLOUT_TYPES)} (rollouts take no plugins)")
    if category == "health":
        if type_name in HEALTH_TYPES:
            return None
        if type_name == "mariadb":
            return "unknown health check type 'mariadb': use type: mysql (it checks MariaDB too)"
        return (f"unknown health check type '{type_name}'{did_you_mean(type_name, HEALTH_TYPES)}: "
                f"Hive has {', '.join(HEALTH_TYPES)} (health checks take no plugins)")
    return None


def _known_types(category: str) -> tuple[str, ...]:
    if category == "runner":
        return tuple(installed_runners())
    return {"rollout": ROLLOUT_TYPES, "health": HEALTH_TYPES, "proxy": PROXY_PLUGIN_TYPES,
            "ssl": tuple(SSL_BLOCKS)}.get(category, ())


def stray_key_hint(key: str, type_name: str, category: str) -> str:
    """A hint for a key beside ``type`` that is not the type's block. Never offers a name
    that is not a known type: when ``type`` is the typo, the hint is about ``type``."""
    known = _known_types(category)
    if key in known and type_name not in known:
        return f" (did you mean type: {key}?)"
    if type_name in known:
        return did_you_mean(key, [type_name])
    return ""


class TypedBlocks(BuilderBase):
    """Reads a ``{type: X, X: {...}}`` mapping. State: sink, defaults (via ``_apply_defaults``)."""

    def _plugin_block(
        self,
        value: Any,
        path: KeyPath,
        *,
        category: str,
        label: str,
        required_blocks: frozenset[str],
        type_required: str,
        missing_block: str,
    ) -> tuple[str, dict[str, Any]] | None:
        """The `{type: X, X: {...}}` pattern, with `defaults[hive.<category>.X]` merged into the
        X block. Returns (type, block) or None after reporting."""
        if not self._expect_mapping(value, path, "a mapping like {type: X, X: {...}}"):
            return None
        if "type" not in value:
            self.sink.error((*path, "type"), "'type' is required")
            return None
        type_name = value["type"]
        if not isinstance(type_name, str):
            self.sink.error((*path, "type"), f"expected a string, got {describe(type_name)}")
            return None
        if type_name == "":
            self.sink.error((*path, "type"), type_required)
            return None
        for key in value:
            if key not in ("type", type_name):
                self.sink.warning(
                    (*path, key),
                    f"ignored: the {label} type is '{type_name}'{stray_key_hint(key, type_name, category)}",
                )
        unknown = _unknown_type(category, type_name)
        if unknown is not None:
            self.sink.error((*path, "type"), unknown)
            return None
        block = value.get(type_name)
        if block is None:
            if type_name in required_blocks:
                self.sink.error(path, missing_block.format(t=type_name))
                return None
            self.sink.warning(
                path,
                f"Missing '{type_name}' configuration for {type_name} {label} (may be auto-installed)",
            )
            return type_name, {}
        if not self._expect_mapping(block, (*path, type_name)):
            return None
        return type_name, self._apply_defaults(
            f"hive.{category}.{type_name}", block, (*path, type_name)
        )
