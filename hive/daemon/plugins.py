"""Core plugins inside the daemon: loading, settings, lifecycle, isolation.

Each enabled plugin gets a :class:`PluginHost`, which owns everything of that plugin:

- its **thread**: the plugin's code runs on an event loop of its own, in a thread of its
  own (:mod:`.plugin_thread`), so a plugin that blocks cannot stall the daemon; every
  callback is awaited from the daemon's loop with a deadline, and a callback that does
  not end even when cancelled (a blocked loop), like a loop that stops answering the
  watchdog, fails the plugin at once and its thread is given up;
- its **client**: one end of a socket pair served by the daemon's own server as a
  connection limited to the plugin's scope (the same protocol as every client);
- its **events**: a bus subscription of its own, bounded and dropping its oldest events
  when the plugin falls behind (counted as ``dropped``), read by the host's worker task,
  which calls ``on_event`` one event at a time under ``event_timeout``;
- its **tasks**: the worker and the plugin's ``run()``, in a cancel scope of the host's;
- its **health**: every exception or timeout is logged with the plugin's name, counted,
  kept as ``last_error`` and published (``PluginFailed``); :data:`FAILURE_LIMIT` failures
  in a row open the circuit breaker: the plugin is shut down and shown ``failed`` until
  enabled again.

``[plugins.NAME]`` in config.toml enables a plugin (``enabled``, ``scope``, the timeouts,
the queue size; without ``scope`` its client gets the plugin class's ``default_scope``) and carries its settings (``[plugins.NAME.settings]``), validated against
the plugin's ``Settings`` struct when the daemon starts and on every reload.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import msgspec

from hive.entry_points import EntryPoint, entry_points
from hive.plugin import FAILURE_LIMIT, CorePlugin, PluginCallError
from hive_client import (
    DaemonEvent,
    ErrorCode,
    PluginConfigured,
    PluginFailed,
    PluginInfo,
    PluginState,
    PluginStateChanged,
)

if TYPE_CHECKING:
    from .app import App
    from .events import Subscription
    from .plugin_thread import PluginCall, PluginThread
    from .settings import DaemonSettings, PluginTrust

__all__ = ["GROUP", "PluginConfigError", "PluginHost", "PluginManager", "check_plugin_settings"]

GROUP = "hive.core_plugins"
Scope = Literal["read", "operate", "admin"]
DEFAULT_CALL_TIMEOUT = 30.0  # a plugin's calls to the daemon
WATCH_INTERVAL = 1.0  # how often the watchdog checks that a plugin's loop answers
log = logging.getLogger("hive.plugins")


class PluginBlocked(Exception):
    """A callback did not end even when cancelled: the plugin's loop is blocked (the
    message says where its thread is)."""


def _grace(timeout: float) -> float:
    """How long a cancelled callback has to end before its loop counts as blocked."""
    return max(1.0, timeout) if math.isfinite(timeout) else 1.0


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
    settings: dict[str, Any] = {}


def _table(name: str, raw: Any) -> PluginTable:
    try:
        table = msgspec.convert(raw, PluginTable)
    except msgspec.ValidationError as exc:
        raise PluginConfigError(f"[plugins.{name}]: {exc}") from None
    if table.queue < 1:
        raise PluginConfigError(f"[plugins.{name}]: queue must be at least 1")
    return table


def _settings(name: str, plugin_class: type[CorePlugin[Any]], raw: Mapping[str, Any]) -> msgspec.Struct:
    try:
        return msgspec.convert(dict(raw), plugin_class.Settings, str_keys=True)
    except msgspec.ValidationError as exc:
        raise PluginConfigError(f"[plugins.{name}.settings]: {exc}") from None


def _installed() -> dict[str, EntryPoint]:
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


def _load(name: str, installed: Mapping[str, EntryPoint], trust: PluginTrust | None) -> type[CorePlugin[Any]]:
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
    return loaded


def check_plugin_settings(settings: DaemonSettings) -> list[str]:
    """Every problem of the ``[plugins.*]`` tables (the plugins are imported to validate
    their settings); run before the daemon starts, so a typo stops the start."""
    problems = []
    installed = _installed()
    for name, raw in settings.plugins.items():
        try:
            table = _table(name, raw)
            if table.enabled:
                _settings(name, _load(name, installed, settings.plugin_trust), table.settings)
        except PluginRefused:
            continue  # reported by the plugin's state once the daemon runs
        except PluginConfigError as exc:
            problems.append(str(exc))
    return problems


def _about_itself(event: DaemonEvent, name: str) -> bool:
    return isinstance(event, PluginFailed | PluginStateChanged) and event.plugin == name


class PluginHost:
    """One plugin (see the module docstring)."""

    def __init__(self, manager: PluginManager, name: str, table: PluginTable) -> None:
        self.manager = manager
        self.name = name
        self.table = table
        self.plugin: CorePlugin[Any] | None = None
        self.default_scope: Scope = CorePlugin.default_scope  # the class's, once loaded
        self.distribution = ""
        self.state = PluginState.DISABLED
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.last_error: str | None = None
        self._failures_in_row = 0
        self._subscription: Subscription | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._lock = anyio.Lock()
        self._busy = False  # inside on_event
        self._caught_up = anyio.Event()  # set when the queue ran empty (drain waits on it)
        self._thread: PluginThread | None = None
        self._calls: set[PluginCall] = set()  # submitted to the plugin's thread, not ended
        self._blocked: str | None = None  # where its thread was stuck when given up

    @property
    def scope(self) -> Scope:
        """The scope its client gets: config.toml's ``scope``, else the plugin's default."""
        return self.table.scope or self.default_scope

    def info(self) -> PluginInfo:
        pending = self._subscription.dropped if self._subscription is not None else 0
        return PluginInfo(
            name=self.name, version=self.plugin.version if self.plugin else "",
            distribution=self.distribution, state=self.state, scope=self.scope,
            scope_from="config" if self.table.scope else "plugin",
            delivered=self.delivered, dropped=self.dropped + pending, failed=self.failed,
            last_error=self.last_error,
        )

    def _set_state(self, state: PluginState, message: str = "") -> None:
        previous, self.state = self.state, state
        if previous != state:
            self.manager.app.bus.publish(PluginStateChanged(
                plugin=self.name, state=state.value, previous=previous.value, message=message))

    def _failure(self, what: str, exc: BaseException | None, message: str | None = None) -> bool:
        """Count a failure; True if the circuit breaker opened."""
        if message is not None:
            text = message
        else:
            text = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
        self.failed += 1
        self._failures_in_row += 1
        self.last_error = text
        log.error("plugin %s: %s", self.name, text, exc_info=exc if isinstance(exc, Exception) else None)
        tripped = self._failures_in_row >= FAILURE_LIMIT
        self.manager.app.bus.publish(PluginFailed(plugin=self.name, message=text, disabled=tripped))
        return tripped

    # --- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Load, configure, connect and ``init`` the plugin; on failure it is ``failed``
        with the reason in ``last_error`` (the daemon carries on)."""
        async with self._lock:
            if self.state in (PluginState.RUNNING, PluginState.STARTING):
                return
            self._set_state(PluginState.STARTING)
            self._failures_in_row = 0
            try:
                installed = _installed()
                plugin_class = _load(self.name, installed, self.manager.app.settings.plugin_trust)
                self.default_scope = plugin_class.default_scope
                settings = _settings(self.name, plugin_class, self.table.settings)
                self.distribution = installed[self.name].distribution
                plugin = plugin_class()
                plugin.settings = settings
                self.plugin = plugin
            except PluginConfigError as exc:
                self.last_error = str(exc)
                log.error("plugin %s: %s", self.name, exc)
                self._set_state(PluginState.FAILED, str(exc))
                return
            except Exception as exc:  # the plugin's constructor
                self.last_error = f"cannot create the plugin: {exc}"
                log.exception("plugin %s: cannot create it", self.name)
                self._set_state(PluginState.FAILED, self.last_error)
                return
            self._subscription = self.manager.app.bus.subscribe(maxlen=self.table.queue)
            self._stopped = anyio.Event()
            ok = await self.manager.task_group.start(self._life, plugin)
            if not ok:
                self._close_subscription()
                self._set_state(PluginState.FAILED, self.last_error or "")
                return
            self._set_state(PluginState.RUNNING)
            log.info("plugin %s %s running (scope %s, %s)", self.name, plugin.version, self.scope,
                     "from config.toml" if self.table.scope else "the plugin's default")

    async def _life(self, plugin: CorePlugin[Any], *, task_status: anyio.abc.TaskStatus[bool]) -> None:
        """The plugin's whole life, in one task: start its thread, connect its client and
        ``init``, then the event worker, ``run()`` and the watchdog until stopped, then
        ``shutdown()``, and the thread ends (or is given up). Reports whether ``init``
        succeeded."""
        from hive_client import DaemonClient

        from .plugin_thread import HeldContext, PluginThread

        server = self.manager.app.server
        assert server is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server.attach(ours, plugin=self.name, scope=self.scope, max_rate=self.table.max_rate)
        client = DaemonClient(self.manager.app.socket_path, connected=theirs,
                              client_name=f"plugin:{self.name}", timeout=self.table.init_timeout)
        held = HeldContext(client)
        self._thread, self._blocked, self._calls = PluginThread(self.name), None, set()
        started = False
        try:
            try:
                await self._within(self.table.init_timeout, held.open)
            except Exception as exc:
                self._failure("cannot connect to the daemon", exc)
                return
            client.timeout = DEFAULT_CALL_TIMEOUT
            limit = self.table.init_timeout
            try:
                await self._within(limit, plugin.init, client)
            except PluginBlocked as exc:
                self._failure("init", None, f"init did not finish within {limit:g} s and its thread is blocked at {exc}")
                return
            except TimeoutError:
                self._failure("init", None, f"init did not finish within {limit:g} s")
                return
            except Exception as exc:
                self._failure("init failed", exc)
                return
            started = True
            task_status.started(True)
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._deliver, plugin)
                    tasks.start_soon(self._run, plugin)
                    tasks.start_soon(self._watch)
            self._scope = None
            if self._blocked is None:  # a blocked thread would not run it anyway
                await self._shutdown(plugin)
        finally:
            self._scope = None
            if not started:
                task_status.started(False)
            with anyio.CancelScope(shield=True):
                await self._release(held, theirs)
            self._stopped.set()

    async def _within(self, timeout: float, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``function(*args)`` on the plugin's thread, its result within ``timeout``:
        TimeoutError past it (the call is cancelled), PluginBlocked if the call does not
        end even then, the plugin's own exception if it raised."""
        thread = self._thread
        assert thread is not None
        if self._blocked is not None:
            raise PluginBlocked(self._blocked)
        call = thread.submit(function, *args)
        self._calls.add(call)
        try:
            with anyio.move_on_after(timeout):
                await call.finished.wait()
            if not call.finished.is_set():
                thread.cancel(call)
                with anyio.move_on_after(_grace(timeout)):
                    await call.finished.wait()
                if not call.finished.is_set():
                    self._blocked = self._blocked or thread.where()
                    log.error("plugin %s: its thread is blocked:\n%s", self.name, thread.stack())
                    raise PluginBlocked(self._blocked)
                raise TimeoutError
        except BaseException:
            if not call.finished.is_set():
                thread.cancel(call)  # the daemon stops waiting (the plugin is being stopped)
            raise
        self._calls.discard(call)
        return call.result()

    async def _release(self, held: Any, theirs: socket.socket) -> None:
        """Close the plugin's client and end its thread, within ``shutdown_timeout``; a
        thread that is blocked, or does not end its cancelled calls, is given up and its
        connection cut (it can no longer act on the daemon)."""
        thread = self._thread
        if thread is None:
            return
        with anyio.move_on_after(self.table.shutdown_timeout):
            for call in list(self._calls):
                if self._blocked is None:
                    await call.finished.wait()
            self._calls = {call for call in self._calls if not call.finished.is_set()}
            if self._blocked is None and not self._calls:
                try:
                    await self._within(self.table.shutdown_timeout, held.close)
                except Exception:
                    log.exception("plugin %s: closing its client failed", self.name)
        if self._blocked is not None or any(not call.finished.is_set() for call in self._calls):
            log.error("plugin %s: its thread is blocked (at %s); given up", self.name, self._blocked or thread.where())
            thread.abandon()
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_RDWR)
        else:
            thread.stop()

    async def _run(self, plugin: CorePlugin[Any]) -> None:
        try:
            await self._within(math.inf, plugin.run)
        except PluginBlocked as exc:
            self._failure("run", None, f"run() was cancelled and its thread is blocked at {exc}")
            self._trip("its thread is blocked")
        except Exception as exc:
            self._failure("run failed", exc)
            self._trip("run() failed")

    async def _watch(self) -> None:
        """The watchdog: the plugin's loop must answer within ``event_timeout`` (and its
        grace), or the plugin is failed (a blocking call or a CPU loop in its code)."""
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            try:
                await self._within(self.table.event_timeout, _nothing)
            except (PluginBlocked, TimeoutError):
                where = self._blocked or "(unknown)"
                self._failure("watchdog", None, f"the plugin's loop did not answer within "
                              f"{self.table.event_timeout + _grace(self.table.event_timeout):g} s: "
                              f"its thread is blocked at {where}")
                self._trip("its thread is blocked")
                return

    async def _deliver(self, plugin: CorePlugin[Any]) -> None:
        subscription = self._subscription
        assert subscription is not None
        while True:
            try:
                event = await subscription.get()
            except anyio.EndOfStream:
                return
            self.dropped += subscription.take_dropped()
            if _about_itself(event, self.name):
                continue  # its own failures would feed back into it
            self._busy = True
            tag = event.__struct_config__.tag
            limit = self.table.event_timeout
            try:
                await self._within(limit, plugin.on_event, event)
            except PluginBlocked as exc:
                self._failure("on_event", None, f"on_event({tag}) did not finish within {limit:g} s "
                              f"and its thread is blocked at {exc}")
                tripped = True
            except TimeoutError:
                tripped = self._failure("on_event", None, f"on_event({tag}) did not finish within {limit:g} s")
            except Exception as exc:
                tripped = self._failure(f"on_event({tag}) failed", exc)
            else:
                self.delivered += 1
                self._failures_in_row = 0
                tripped = False
            finally:
                self._busy = False
                if not subscription.pending:
                    self._caught_up.set()
            if tripped:
                self._trip("its thread is blocked" if self._blocked else f"{FAILURE_LIMIT} failures in a row")
                return

    def apply_limits(self) -> None:
        """Give the live plugin its table's scope, rate and queue (a reload): what
        ``hive plugins`` shows is what is enforced."""
        from .server import RateLimit

        server = self.manager.app.server
        rate = self.table.max_rate
        for connection in server.connections if server is not None else ():
            if connection.plugin == self.name:
                connection.scope = self.scope
                if (connection.limit.rate if connection.limit else 0.0) != rate:
                    connection.limit = RateLimit(rate, burst=rate) if rate > 0 else None
        if self._subscription is not None:
            self._subscription.resize(self.table.queue)

    def _trip(self, why: str) -> None:
        """Open the circuit breaker: the plugin is stopped (in the background) and failed."""
        log.error("plugin %s taken out of service: %s", self.name, why)
        self.manager.task_group.start_soon(self.stop, PluginState.FAILED, why)

    async def drain(self) -> None:
        """Wait until the plugin has handled what its queue holds (shutdown)."""
        while self.state == PluginState.RUNNING and (self._busy or (
                self._subscription is not None and self._subscription.pending)):
            self._caught_up = anyio.Event()
            await self._caught_up.wait()

    async def stop(self, final: PluginState = PluginState.DISABLED, why: str = "") -> None:
        """Cancel the plugin's tasks, then ``shutdown()`` under its deadline; shielded."""
        async with self._lock:
            if self.state not in (PluginState.RUNNING, PluginState.STARTING):
                if final == PluginState.DISABLED and self.state == PluginState.FAILED:
                    self._set_state(final, why)
                return
            with anyio.CancelScope(shield=True):
                if self._scope is not None:
                    self._scope.cancel()
                await self._stopped.wait()
                self._close_subscription()
            self._set_state(final, why)

    async def _shutdown(self, plugin: CorePlugin[Any]) -> None:
        with anyio.CancelScope(shield=True):
            limit = self.table.shutdown_timeout
            try:
                await self._within(limit, plugin.shutdown)
            except PluginBlocked as exc:
                self._failure("shutdown", None, f"shutdown did not finish within {limit:g} s and its thread is blocked at {exc}")
            except TimeoutError:
                self._failure("shutdown", None, f"shutdown did not finish within {limit:g} s")
            except Exception as exc:
                self._failure("shutdown failed", exc)

    def _close_subscription(self) -> None:
        if self._subscription is not None:
            self.dropped += self._subscription.take_dropped()
            self._subscription.close()
            self._subscription = None


async def _nothing() -> None:
    return None


class PluginManager:
    """Every configured plugin; ``app.plugins``."""

    def __init__(self, app: App, task_group: anyio.abc.TaskGroup) -> None:
        self.app = app
        self.task_group = task_group
        self.hosts: dict[str, PluginHost] = {}

    async def start_all(self) -> None:
        """Start every enabled plugin, together; returns when each is up or failed."""
        for name, raw in self.app.settings.plugins.items():
            try:
                table = _table(name, raw)
            except PluginConfigError as exc:  # checked before the start: only on reload
                log.error("%s", exc)
                continue
            self.hosts[name] = PluginHost(self, name, table)
        async with anyio.create_task_group() as starts:
            for host in self.hosts.values():
                if host.table.enabled:
                    starts.start_soon(host.start)

    async def shutdown(self, deadline: float) -> None:
        """Let each plugin handle ``DaemonShutdown`` (and what precedes it), then stop it;
        everything within ``deadline`` seconds per plugin."""
        async with anyio.create_task_group() as stops:
            for host in self.hosts.values():
                stops.start_soon(self._shutdown_one, host, deadline)

    @staticmethod
    async def _shutdown_one(host: PluginHost, deadline: float) -> None:
        with anyio.move_on_after(deadline):
            await host.drain()
        await host.stop()

    def call_scope(self, name: str, command: str) -> Scope:
        """The scope a client needs for ``command`` of plugin ``name``: what the plugin
        declares, ``admin`` when it does not (a plugin that is not running: ``read``,
        so the caller learns that it is not running)."""
        plugin = self.get(name).plugin
        if plugin is None:
            return "read"
        return plugin.call_scopes.get(command, "admin")

    async def call(self, name: str, command: str, args: dict[str, Any]) -> Any:
        """Run a plugin's own command; RequestError for a refusal, a plugin not running,
        a failure or a timeout."""
        from .errors import RequestError

        host = self.get(name)
        plugin = host.plugin
        if host.state != PluginState.RUNNING or plugin is None:
            raise RequestError(ErrorCode.UNSUPPORTED, f"plugin {name!r} is {host.state}, not running"
                               + (f" ({host.last_error})" if host.last_error else ""))
        try:
            return await host._within(host.table.call_timeout, plugin.call, command, args)
        except PluginBlocked as exc:
            host._failure(f"call({command})", None, f"call({command}) did not finish within "
                          f"{host.table.call_timeout:g} s and its thread is blocked at {exc}")
            host._trip("its thread is blocked")
            raise RequestError(ErrorCode.TIMEOUT, f"{name} {command} did not finish within "
                                                  f"{host.table.call_timeout:g} s; the plugin is blocked "
                                                  f"and was taken out of service") from None
        except PluginCallError as exc:
            raise RequestError.invalid(f"{name} {command}: {exc}") from None
        except TimeoutError:
            raise RequestError(ErrorCode.TIMEOUT, f"{name} {command} did not finish within "
                                                  f"{host.table.call_timeout:g} s") from None
        except Exception as exc:
            host._failure(f"call({command}) failed", exc)
            raise RequestError(ErrorCode.INTERNAL, f"{name} {command} failed: {exc}") from None

    def get(self, name: str) -> PluginHost:
        host = self.hosts.get(name)
        if host is None:
            from .errors import RequestError
            from .handlers.plugins import not_configured

            known = ", ".join(sorted(self.hosts)) or "none is configured"
            raise RequestError.not_found(not_configured(name, f"configured: {known}") if self.hosts else not_configured(name))
        return host

    def infos(self) -> list[PluginInfo]:
        return [self.hosts[name].info() for name in sorted(self.hosts)]

    async def act(self, name: str, action: str) -> PluginInfo:
        host = self.get(name)
        if action in ("disable", "restart"):
            await host.stop(PluginState.DISABLED, f"{action} requested")
        if action == "restart":
            host.delivered = host.dropped = host.failed = 0
            host.last_error = None
        if action in ("enable", "restart"):
            await host.start()
        return host.info()

    async def reconfigure(self, plugins: Mapping[str, Any]) -> list[str]:
        """New ``[plugins.*]`` tables (a reload): plugins added or enabled start, removed or
        disabled ones stop, changed settings are set and announced with PluginConfigured.
        A wrong table is refused (the plugin keeps its settings); the problems."""
        problems: list[str] = []
        installed = _installed()
        for name in sorted(set(self.hosts) | set(plugins)):
            host = self.hosts.get(name)
            if name not in plugins:
                if host is not None:
                    await host.stop(PluginState.DISABLED, "removed from config.toml")
                    del self.hosts[name]
                continue
            try:
                table = _table(name, plugins[name])
                trust = self.app.settings.plugin_trust
                plugin_class = _load(name, installed, trust) if table.enabled else None
                settings = _settings(name, plugin_class, table.settings) if plugin_class else None
            except PluginConfigError as exc:
                problems.append(str(exc))
                continue
            if host is None:
                host = self.hosts[name] = PluginHost(self, name, table)
                if table.enabled:
                    await host.start()
                continue
            previous, host.table = host.table, table
            if plugin_class is not None:
                host.default_scope = plugin_class.default_scope
            changed = table != previous
            host.apply_limits()
            if not table.enabled:
                await host.stop(PluginState.DISABLED, "disabled in config.toml")
            elif not previous.enabled:
                await host.start()  # enabled in config.toml (a run-time disable stays)
            elif changed and host.plugin is not None and settings is not None:
                host.plugin.settings = settings
                self.app.bus.publish(PluginConfigured(plugin=name))
        return problems

