"""What a core plugin is written against: the plugin-facing surface of Hive.

A core plugin is a Python package registered in the ``hive.core_plugins`` entry-point
group, loaded into the daemon when ``config.toml`` enables it::

    [plugins.greeter]             # enabled = true is the default
    scope = "read"                # read | operate | admin: what its client may ask
                                  # (default: the plugin's default_scope)
    [plugins.greeter.settings]    # validated against the plugin's Settings struct
    greeting = "hello"

The daemon creates the plugin (no arguments), sets :attr:`CorePlugin.settings`, and then:

1. ``await init(client)`` once the socket listens, with a deadline; ``client`` is a
   :class:`hive_client.DaemonClient` speaking the ordinary protocol, limited to the
   plugin's scope.
2. ``await run()`` in a task of its own, for the plugin's long-running work (a
   WebSocket connection, a sampling loop); it is cancelled before ``shutdown``.
3. ``await on_event(event)`` for every event of the bus, one at a time, in order, from a
   bounded queue of its own (a slow plugin loses its oldest events, counted as dropped;
   it never slows the daemon or the other plugins), each call with a deadline.
   ``DaemonStarted`` is published once every plugin is up; on ``SIGHUP`` new settings
   are set and ``PluginConfigured`` is delivered. A plugin is not sent the events about
   its own failures and states.
4. ``DaemonShutdown`` is delivered, then ``await shutdown()`` with a deadline, before
   the socket closes.

``await call(command, args)`` serves the plugin's own commands (``plugin_call``), under
``call_timeout``.

An exception or a timeout in any of these is caught, logged with the plugin's name and
counted (state ``degraded``); after :data:`FAILURE_LIMIT` failures in a row the circuit
breaker takes the plugin out of service (state ``failed``) and, after the table's
``recovery_timeout``, starts it again on trial (``half_open``).

The manifest is a set of class attributes: :attr:`CorePlugin.api_version` (the daemon
refuses a plugin written for an API it does not speak, see :data:`SUPPORTED_API_VERSIONS`),
:attr:`CorePlugin.capabilities` (what it provides, shown by ``hive plugins``) and
:attr:`CorePlugin.depends_on` (plugins that must be running before its ``init``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import msgspec

from hive_client import DaemonEvent

if TYPE_CHECKING:
    from hive_client import DaemonClient

__all__ = [
    "API_VERSION", "FAILURE_LIMIT", "SUPPORTED_API_VERSIONS", "CorePlugin", "DaemonClient", "DaemonEvent",
    "NoSettings", "PluginCallError",
]

# Failures in a row (raised or timed out) after which a plugin is taken out of service.
FAILURE_LIMIT = 5
# The plugin API this module describes; a plugin declares the one it is written for.
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})


class PluginCallError(Exception):
    """A plugin command refused (unknown command, wrong arguments, nothing to do)."""


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The settings of a plugin that takes none: any key is an error."""


SettingsT = TypeVar("SettingsT", bound=msgspec.Struct)


class CorePlugin(ABC, Generic[SettingsT]):
    """Base of core plugins. Subclasses set :attr:`name`, :attr:`version` and, if they
    take settings, :attr:`Settings` (a msgspec Struct; use ``forbid_unknown_fields=True``
    so a typo is an error naming the key)."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    # The scope a client needs for each of :meth:`call`'s commands; one not listed needs
    # ``admin`` (a command that writes files or changes what the daemon runs must).
    call_scopes: ClassVar[dict[str, Literal["read", "operate", "admin"]]] = {}
    # The scope its own client gets when ``[plugins.NAME]`` sets none: what the plugin's
    # work needs (``admin`` to add sources or create services); ``scope`` there wins.
    default_scope: ClassVar[Literal["read", "operate", "admin"]] = "operate"
    Settings: ClassVar[type[msgspec.Struct]] = NoSettings
    settings: SettingsT
    # The manifest. The plugin API it is written for: a daemon that does not support it
    # refuses the plugin (it shows failed) rather than run it against another API.
    api_version: ClassVar[int] = API_VERSION
    # What it provides ("metrics", "backup"): shown by `hive plugins`, for people and tools.
    capabilities: ClassVar[tuple[str, ...]] = ()
    # Plugins (their [plugins.NAME] names) that must be running before its init; it is
    # shut down before them. A dependency not configured or failed fails this plugin alone.
    depends_on: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    async def init(self, client: DaemonClient) -> None:
        """Get ready: keep ``client``; return promptly (long work goes in :meth:`run`)."""

    async def run(self) -> None:
        """The plugin's long-running work, cancelled before :meth:`shutdown`."""

    async def on_event(self, event: DaemonEvent) -> None:
        """One event of the daemon's bus."""

    async def shutdown(self) -> None:
        """Release what :meth:`init` and :meth:`run` took."""

    async def call(self, command: str, args: dict[str, Any]) -> Any:
        """A command of the plugin's own, asked through the daemon (``plugin_call``,
        ``hive backup now``): its result, JSON-like data. Raise :class:`PluginCallError`
        for a request the plugin refuses; its message is the caller's error."""
        raise PluginCallError(f"plugin {self.name!r} has no commands")


def __getattr__(name: str) -> Any:
    if name == "DaemonClient":
        from hive_client import DaemonClient

        return DaemonClient
    raise AttributeError(f"module 'hive.plugin' has no attribute {name!r}")
