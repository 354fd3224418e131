"""Loading a core plugin: its ``[plugins.NAME]`` table, its class from the entry point
(after the ``[plugin_trust]`` check, so refused code never runs), its manifest's API
version, and its settings converted to the plugin's ``Settings`` struct."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from hive.entry_points import EntryPoint, entry_points
from hive.plugin import CorePlugin

from .plugin_manifest import check_api_version

if TYPE_CHECKING:
    from .settings import DaemonSettings, PluginTrust

__all__ = [
    "GROUP", "PluginConfigError", "PluginRefused", "PluginTable", "Scope", "check_plugin_settings",
    "installed_plugins", "load_plugin", "plugin_settings", "plugin_table",
]

GROUP = "hive.core_plugins"
Scope = Literal["read", "operate", "admin"]


class PluginConfigError(Exception):
    """A ``[plugins.NAME]`` table is wrong; the message names the plugin and the key."""


class PluginRefused(PluginConfigError):
    """``[plugin_trust]`` refuses the installed plugin. Not a reason to refuse the daemon's
    start (the services must be supervised): the plugin alone shows ``failed``."""


class PluginTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    scope: Scope | None = None  # None: the plugin class's default_scope
    init_timeout: float = 10.0
    event_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    queue: int = 1000  # events held for a plugin that is behind
    max_rate: float = 200.0  # requests a second its client may send on average (0: no limit)
    call_timeout: float = 300.0  # a command of its own (plugin_call)
    recovery_timeout: float = 30.0  # breaker open this long before a trial (0: until enabled by hand)
    # Where its code runs: a child process of its own (a CPU loop or a blocking call cannot
    # take the daemon's GIL, and it can be killed), or a thread of the daemon's process.
    isolation: Literal["process", "thread"] = "process"
    settings: dict[str, Any] = {}


def plugin_table(name: str, raw: Any) -> PluginTable:
    try:
        table = msgspec.convert(raw, PluginTable)
    except msgspec.ValidationError as exc:
        raise PluginConfigError(f"[plugins.{name}]: {exc}") from None
    if table.queue < 1:
        raise PluginConfigError(f"[plugins.{name}]: queue must be at least 1")
    if table.recovery_timeout < 0:
        raise PluginConfigError(f"[plugins.{name}]: recovery_timeout must be 0 (no automatic recovery) or more")
    return table


def plugin_settings(name: str, plugin_class: type[CorePlugin[Any]], raw: Mapping[str, Any]) -> msgspec.Struct:
    try:
        return msgspec.convert(dict(raw), plugin_class.Settings, str_keys=True)
    except msgspec.ValidationError as exc:
        raise PluginConfigError(f"[plugins.{name}.settings]: {exc}") from None


def installed_plugins() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(GROUP)}


def _check_trust(name: str, entry: EntryPoint, trust: PluginTrust) -> None:
    """Refuse a plugin whose distribution, version or files match no allowlist entry."""
    from hive.plugin_trust import bytecode_problems, pin_of

    try:
        pin = pin_of(entry)
    except OSError as exc:
        raise PluginRefused(f"[plugins.{name}]: refused by [plugin_trust]: cannot hash the files of "
                                f"{entry.distribution}: {exc}") from None
    same_name = [a for a in trust.allow if _normalize(a.distribution) == _normalize(pin.distribution)]
    if any(a.version == pin.version and a.sha256 == pin.sha256 for a in same_name):
        planted = bytecode_problems(entry)
        if not planted:
            return
        raise PluginRefused(
            f"[plugins.{name}]: refused by [plugin_trust]: {planted[0]}, so the code that would run is not "
            f"the pinned code; delete that file (Python compiles a new one from the source) if you trust it"
        )
    if not same_name:
        why = f"{pin.distribution} is not in the allowlist"
    elif not any(a.version == pin.version for a in same_name):
        pinned = ", ".join(sorted(a.version for a in same_name))
        why = f"{pin.distribution} {pin.version} is installed, the allowlist pins {pinned}"
    else:
        why = f"the installed files of {pin.distribution} {pin.version} do not match the pinned sha256 (they hash to {pin.sha256})"
    raise PluginRefused(
        f"[plugins.{name}]: refused by [plugin_trust]: {why}; `hive plugins pin {name}` prints the pin of what is installed"
    )


def _normalize(distribution: str) -> str:
    return distribution.replace("_", "-").replace(".", "-").lower()


def load_plugin(name: str, installed: Mapping[str, EntryPoint], trust: PluginTrust | None) -> type[CorePlugin[Any]]:
    entry = installed.get(name)
    if entry is None:
        known = ", ".join(sorted(installed)) or "none"
        raise PluginConfigError(
            f"[plugins.{name}]: no core plugin named {name!r} is installed (installed: {known}); "
            f"install a package that registers it in the {GROUP!r} entry-point group"
        )
    if trust is not None:
        _check_trust(name, entry, trust)  # before importing: untrusted code never runs
    try:
        loaded = entry.load()
    except Exception as exc:
        raise PluginConfigError(f"[plugins.{name}]: the plugin failed to import: {exc}") from None
    if not (isinstance(loaded, type) and issubclass(loaded, CorePlugin)):
        raise PluginConfigError(f"[plugins.{name}]: {entry.value} is not a hive.plugin.CorePlugin")
    refused = check_api_version(name, loaded)
    if refused is not None:
        raise PluginRefused(refused)
    return loaded


def check_plugin_settings(settings: DaemonSettings) -> list[str]:
    """Every problem of the ``[plugins.*]`` tables (the plugins are imported to validate
    their settings); run before the daemon starts, so a typo stops the start."""
    problems = []
    installed = installed_plugins()
    for name, raw in settings.plugins.items():
        try:
            table = plugin_table(name, raw)
            if table.enabled:
                plugin_settings(name, load_plugin(name, installed, settings.plugin_trust), table.settings)
        except PluginRefused:
            continue  # reported by the plugin's state once the daemon runs
        except PluginConfigError as exc:
            problems.append(str(exc))
    return problems
