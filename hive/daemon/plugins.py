"""Core plugins inside the daemon: loading, settings, lifecycle, isolation.

Each enabled plugin gets a :class:`PluginHost`, which owns everything of that plugin:

- its **process**: the plugin's code runs on an event loop of its own, in a child process
  of its own (:mod:`.plugin_process`; with ``isolation = "thread"``, a thread of the
  daemon, :mod:`.plugin_thread`), so a plugin that blocks or spins cannot stall the
  daemon; every callback is awaited from the daemon's loop with a deadline, and a
  callback that does not end even when cancelled (a blocked loop), like a loop that stops
  answering the watchdog, fails the plugin at once and its process group is killed;
- its **client**: one end of a socket pair served by the daemon's own server as a
  connection limited to the plugin's scope (the same protocol as every client);
- its **events**: a bus subscription of its own, bounded and dropping its oldest events
  when the plugin falls behind (counted as ``dropped``), read by the host's worker task,
  which calls ``on_event`` one event at a time under ``event_timeout``;
- its **tasks**: the worker and the plugin's ``run()``, in a cancel scope of the host's;
- its **health**: ``running`` (healthy), ``degraded`` (its last call failed, or its loop
  is late answering the watchdog's heartbeat), ``unhealthy`` (its loop has not answered
  for ``event_timeout``; the reason says where its thread is). Every exception or timeout
  is logged with the plugin's name, counted, kept as ``last_error`` and published
  (``PluginFailed``);
- its **circuit breaker**: :data:`FAILURE_LIMIT` failures in a row (or a blocked loop)
  open it: the plugin is shut down and shown ``failed``; after ``recovery_timeout`` it is
  started again on trial (``half_open``): its first success closes the breaker, its first
  failure opens it again for twice as long (up to :data:`RECOVERY_CAP`);
- its **manifest** (:mod:`.plugin_manifest`): a plugin API version the daemon does not
  support is refused; ``depends_on`` orders the starts and the shutdown.

``[plugins.NAME]`` in config.toml enables a plugin (``enabled``, ``scope``, the timeouts,
the queue size; without ``scope`` its client gets the plugin class's ``default_scope``) and carries its settings (``[plugins.NAME.settings]``), validated against
the plugin's ``Settings`` struct when the daemon starts and on every reload.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

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

from .plugin_loading import (
    PluginConfigError,
    PluginTable,
    Scope,
    check_plugin_settings,
    installed_plugins,
    load_plugin,
    plugin_settings,
    plugin_table,
)
from .plugin_manifest import forget_modules, shutdown_waves

if TYPE_CHECKING:
    from .app import App
    from .events import Subscription
    from .plugin_process import PluginProcess, RemoteCall
    from .plugin_thread import PluginCall, ThreadRunner

    Runner = PluginProcess | ThreadRunner
    RunnerCall = RemoteCall | PluginCall

__all__ = ["PluginConfigError", "PluginHost", "PluginManager", "check_plugin_settings"]

DEFAULT_CALL_TIMEOUT = 30.0  # a plugin's calls to the daemon
WATCH_INTERVAL = 1.0  # how often the watchdog checks that a plugin's loop answers (the heartbeat)
RECOVERY_CAP = 600.0  # the longest the breaker stays open before a trial
# Added to init_timeout for loading the plugin and connecting its client: a fresh
# interpreter's start and its imports, on a busy machine; init has init_timeout.
LOAD_GRACE = 20.0
# A plugin in one of these states is up: its tasks run, it gets events and calls.
LIVE = frozenset({PluginState.RUNNING, PluginState.DEGRADED, PluginState.UNHEALTHY, PluginState.HALF_OPEN})
log = logging.getLogger("hive.plugins")


class PluginBlocked(Exception):
    """A callback did not end even when cancelled: the plugin's loop is blocked (the
    message says where its thread is)."""


def _grace(timeout: float) -> float:
    """How long a cancelled callback has to end before its loop counts as blocked."""
    return max(1.0, timeout) if math.isfinite(timeout) else 1.0


def _about_itself(event: DaemonEvent, name: str) -> bool:
    return isinstance(event, PluginFailed | PluginStateChanged) and event.plugin == name


class PluginHost:
    """One plugin (see the module docstring)."""

    def __init__(self, manager: PluginManager, name: str, table: PluginTable) -> None:
        self.manager = manager
        self.name = name
        self.table = table
        self.plugin_class: type[CorePlugin[Any]] | None = None  # loaded by the daemon: its manifest
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
        self._runner: Runner | None = None  # its process (or thread) while it is up
        self._calls: set[RunnerCall] = set()  # submitted to the plugin, not ended
        self._blocked: str | None = None  # where its thread was stuck when given up
        # The manifest, once the class is loaded.
        self.api_version = 0
        self.capabilities: tuple[str, ...] = ()
        self.depends_on: tuple[str, ...] = ()
        # Health and the breaker.
        self.reason = ""  # why it is not simply running
        self.heartbeat_at: float | None = None  # when its loop last answered
        self._late: str | None = None  # the heartbeat is late: where its thread is
        self._late_for = 0.0
        self._trial = False  # half open: started again by the breaker
        self._recovery_delay = table.recovery_timeout
        self._recovery: anyio.CancelScope | None = None  # the breaker's wait before a trial
        self.retry_at: float | None = None
        # Set when a start attempt has ended (a dependent waits on it); None: none pending.
        self.start_done: anyio.Event | None = None
        self.waiting_for: str | None = None  # the dependency its start waits on

    @property
    def scope(self) -> Scope:
        """The scope its client gets: config.toml's ``scope``, else the plugin's default."""
        return self.table.scope or self.default_scope

    def info(self) -> PluginInfo:
        pending = self._subscription.dropped if self._subscription is not None else 0
        now = anyio.current_time()
        return PluginInfo(
            name=self.name, version=self.plugin_class.version if self.plugin_class else "",
            distribution=self.distribution, state=self.state, scope=self.scope,
            scope_from="config" if self.table.scope else "plugin",
            delivered=self.delivered, dropped=self.dropped + pending, failed=self.failed,
            last_error=self.last_error, reason=self.reason,
            heartbeat=now - self.heartbeat_at if self.state in LIVE and self.heartbeat_at is not None else None,
            retry_in=max(0.0, self.retry_at - now) if self.retry_at is not None else None,
            api_version=self.api_version, capabilities=list(self.capabilities), depends_on=list(self.depends_on),
            isolation=self.table.isolation, pid=self.pid,
        )

    def _set_state(self, state: PluginState, message: str = "") -> None:
        previous, self.state = self.state, state
        self.reason = message if state != PluginState.RUNNING else ""
        if previous != state:
            self.manager.app.bus.publish(PluginStateChanged(
                plugin=self.name, state=state.value, previous=previous.value, message=message))

    def _refresh(self) -> None:
        """The state of a live plugin from its heartbeat, its failures and its breaker."""
        if self.state not in LIVE:
            return
        if self._late is not None and self._late_for >= self.table.event_timeout:
            self._set_state(PluginState.UNHEALTHY, f"its loop has not answered for {self._late_for:g} s: "
                                                   f"its thread is at {self._late}")
        elif self._late is not None:
            self._set_state(PluginState.DEGRADED, f"its heartbeat is {self._late_for:g} s late: "
                                                  f"its thread is at {self._late}")
        elif self._failures_in_row:
            self._set_state(PluginState.DEGRADED, f"{self._failures_in_row} failure(s) in a row: {self.last_error}")
        elif self._trial:
            self._set_state(PluginState.HALF_OPEN, "started again by the circuit breaker, on trial")
        else:
            self._set_state(PluginState.RUNNING)

    def _succeeded(self) -> None:
        """A callback ended well: failures in a row end, a trial closes the breaker."""
        self._failures_in_row = 0
        if self._trial:
            self._trial = False
            self._recovery_delay = self.table.recovery_timeout
            log.info("plugin %s recovered: the circuit breaker is closed", self.name)
        self._refresh()

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
        tripped = self._failures_in_row >= FAILURE_LIMIT or self._trial  # on trial, one failure opens it
        self.manager.app.bus.publish(PluginFailed(plugin=self.name, message=text, disabled=tripped))
        if not tripped:
            self._refresh()
        return tripped

    # --- start and stop -----------------------------------------------------------------

    async def start(self) -> None:
        """Load, configure, connect and ``init`` the plugin, once its dependencies run; on
        failure it is ``failed`` with the reason in ``last_error`` (the daemon carries on)
        and, unless the failure is its configuration's, the breaker tries it again later."""
        async with self._lock:
            if self.start_done is None or self.start_done.is_set():
                self.start_done = anyio.Event()
            try:
                if self.state not in LIVE and self.state != PluginState.STARTING:
                    await self._start()
            finally:
                self.waiting_for = None
                self.start_done.set()

    async def _start(self) -> None:
        self._set_state(PluginState.STARTING)
        self._failures_in_row = 0
        self.retry_at = None
        try:
            installed = installed_plugins()
            plugin_class = load_plugin(self.name, installed, self.manager.app.settings.plugin_trust)
            self.default_scope = plugin_class.default_scope
            self.api_version = plugin_class.api_version
            self.capabilities = tuple(plugin_class.capabilities)
            self.depends_on = tuple(plugin_class.depends_on)
            settings = plugin_settings(self.name, plugin_class, self.table.settings)
            self.distribution = installed[self.name].distribution
        except PluginConfigError as exc:  # its configuration or its manifest: no retry helps
            self._fail_to_start(str(exc), retry=False)
            return
        unmet = await self.manager.wait_for_dependencies(self)
        if unmet is not None:
            self._fail_to_start(unmet[0], retry=unmet[1])
            return
        del settings  # valid: the plugin converts the same table where it runs
        self.plugin_class = plugin_class
        self._subscription = self.manager.app.bus.subscribe(maxlen=self.table.queue)
        self._stopped = anyio.Event()
        self._late, self.heartbeat_at = None, anyio.current_time()
        ok = await self.manager.task_group.start(self._life, installed[self.name].value)
        if not ok:
            self._close_subscription()
            self._fail_to_start(self.last_error or "init failed", retry=True, logged=True)
            return
        if self._trial:
            self._set_state(PluginState.HALF_OPEN, "started again by the circuit breaker, on trial")
        else:
            self._set_state(PluginState.RUNNING)
        log.info("plugin %s %s %s (scope %s, %s, %s)", self.name, plugin_class.version,
                 "on trial (half open)" if self._trial else "running", self.scope,
                 "from config.toml" if self.table.scope else "the plugin's default",
                 f"process {self.pid}" if self.pid is not None else "on a thread of the daemon")

    def _fail_to_start(self, why: str, *, retry: bool, logged: bool = False) -> None:
        self.last_error = why
        if not logged:
            log.error("plugin %s: %s", self.name, why)
        self._set_state(PluginState.FAILED, why)
        if retry:
            self._schedule_recovery()

    # --- the circuit breaker ----------------------------------------------------------

    def _schedule_recovery(self) -> None:
        """The breaker is open: start the plugin again on trial after the recovery delay,
        which doubles with every failed trial (up to RECOVERY_CAP)."""
        if self.table.recovery_timeout <= 0 or self._recovery is not None:
            return
        delay = self._recovery_delay or self.table.recovery_timeout
        self._recovery_delay = min(RECOVERY_CAP, max(delay * 2, self.table.recovery_timeout))
        self.retry_at = anyio.current_time() + delay
        self._recovery = anyio.CancelScope()
        log.info("plugin %s: circuit breaker open; trying it again in %g s", self.name, delay)
        self.manager.task_group.start_soon(self._recover, self._recovery, delay)

    async def _recover(self, scope: anyio.CancelScope, delay: float) -> None:
        with scope:
            await anyio.sleep(delay)
            self._recovery, self.retry_at = None, None
            if self.state == PluginState.FAILED:
                self._trial = True
                await self.start()

    def recovery_changed(self) -> None:
        """A reload changed ``recovery_timeout``: the backoff starts again from it, and a
        trial already waiting is rescheduled with it from now (0: no trial)."""
        self._recovery_delay = self.table.recovery_timeout
        if self._recovery is not None:
            self._recovery.cancel()
            self._recovery, self.retry_at = None, None
            self._schedule_recovery()

    def reset_breaker(self) -> None:
        """A start or stop by hand: no trial pending, the recovery delay back to its start."""
        if self._recovery is not None:
            self._recovery.cancel()
        self._recovery, self.retry_at, self._trial = None, None, False
        self._recovery_delay = self.table.recovery_timeout

    @property
    def pid(self) -> int | None:
        """The pid of the plugin's process while it is up (None on a thread)."""
        return self._runner.pid if self._runner is not None else None

    def _new_runner(self) -> Runner:
        from .plugin_process import PluginProcess
        from .plugin_thread import ThreadRunner

        if self.table.isolation == "thread":
            assert self.plugin_class is not None
            return ThreadRunner(self.name, self.plugin_class)
        return PluginProcess(self.name, self.manager.task_group)

    async def _life(self, entry: str, *, task_status: anyio.abc.TaskStatus[bool]) -> None:
        """The plugin's whole life, in one task: start its process (or thread), connect
        its client and ``init``, then the event worker, ``run()`` and the watchdog until
        stopped, then ``shutdown()``, and the process ends (or is killed). Reports whether
        ``init`` succeeded."""
        server = self.manager.app.server
        assert server is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server.attach(ours, plugin=self.name, scope=self.scope, max_rate=self.table.max_rate)
        runner = self._runner = self._new_runner()
        self._blocked, self._calls = None, set()
        started = False
        try:
            try:
                await runner.begin(theirs)
                await self._within(self.table.init_timeout + LOAD_GRACE, "load", args={
                    "entry": entry, "settings": self.table.settings, "path": list(sys.path),
                    "log_level": logging.getLogger("hive").getEffectiveLevel()})
            except PluginBlocked as exc:
                self._failure("load", None, f"loading the plugin did not finish and its thread is blocked at {exc}")
                return
            except Exception as exc:
                self._failure("cannot create the plugin", exc)
                return
            try:
                await self._within(self.table.init_timeout + LOAD_GRACE, "connect", args={
                    "socket_path": str(self.manager.app.socket_path), "client_name": f"plugin:{self.name}",
                    "timeout": self.table.init_timeout, "call_timeout": DEFAULT_CALL_TIMEOUT})
            except Exception as exc:
                self._failure("cannot connect to the daemon", exc)
                return
            limit = self.table.init_timeout
            try:
                await self._within(limit, "init")
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
                    tasks.start_soon(self._deliver)
                    tasks.start_soon(self._run)
                    tasks.start_soon(self._watch)
            self._scope = None
            if self._blocked is None and runner.ended is None:  # a blocked plugin would not run it anyway
                await self._shutdown()
        finally:
            self._scope = None
            if not started:
                task_status.started(False)
            with anyio.CancelScope(shield=True):
                await self._release(runner, theirs)
                self._runner = None
            self._stopped.set()

    async def _within(self, timeout: float, method: str, *, event: DaemonEvent | None = None,
                      args: dict[str, Any] | None = None) -> Any:
        """The plugin's ``method`` in its process (or on its thread), its result within
        ``timeout``: TimeoutError past it (the call is cancelled), PluginBlocked if the
        call does not end even then, the plugin's own exception if it raised."""
        runner = self._runner
        assert runner is not None
        if self._blocked is not None:
            raise PluginBlocked(self._blocked)
        call = runner.submit(method, event=event, args=args)
        self._calls.add(call)
        try:
            with anyio.move_on_after(timeout):
                await call.finished.wait()
            if not call.finished.is_set():
                runner.cancel(call)  # type: ignore[arg-type]
                with anyio.move_on_after(_grace(timeout)):
                    await call.finished.wait()
                if not call.finished.is_set():
                    with anyio.CancelScope(shield=True):
                        self._blocked = self._blocked or await runner.where()
                        log.error("plugin %s: its thread is blocked:\n%s", self.name, await runner.stack())
                    raise PluginBlocked(self._blocked)
                raise TimeoutError
        except BaseException:
            if not call.finished.is_set():
                runner.cancel(call)  # type: ignore[arg-type]  # the daemon stops waiting (the plugin is being stopped)
            raise
        self._calls.discard(call)
        return call.result()

    async def _release(self, runner: Runner, theirs: socket.socket) -> None:
        """Close the plugin's client and end its process (or thread), within
        ``shutdown_timeout``; a plugin that is blocked, or does not end its cancelled
        calls, is killed with its process group (a thread: given up, its connection cut,
        so it can no longer act on the daemon)."""
        with anyio.move_on_after(self.table.shutdown_timeout):
            for call in list(self._calls):
                if self._blocked is None:
                    await call.finished.wait()
            self._calls = {call for call in self._calls if not call.finished.is_set()}
            if self._blocked is None and not self._calls and runner.ended is None:
                try:
                    await self._within(self.table.shutdown_timeout, "disconnect")
                except Exception:
                    log.exception("plugin %s: closing its client failed", self.name)
        if self._blocked is not None or any(not call.finished.is_set() for call in self._calls):
            log.error("plugin %s: its thread is blocked (at %s); %s", self.name,
                      self._blocked or await runner.where(),
                      "killed" if runner.pid is not None else "given up")
            await runner.abandon()
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_RDWR)
        else:
            await runner.stop()

    async def _run(self) -> None:
        try:
            await self._within(math.inf, "run")
        except PluginBlocked as exc:
            self._failure("run", None, f"run() was cancelled and its thread is blocked at {exc}")
            self._trip("its thread is blocked")
        except Exception as exc:
            self._failure("run failed", exc)
            self._trip("run() failed")

    async def _watch(self) -> None:
        """The heartbeat: every WATCH_INTERVAL the plugin's loop must answer. Late, the
        plugin is ``degraded``; not answering for ``event_timeout``, ``unhealthy`` (the
        reason says where its thread is, the log has its stack); not even after the grace
        that follows, failed (a blocking call or a CPU loop in its code). A process that
        ended by itself fails the plugin at once."""
        runner = self._runner
        assert runner is not None
        limit = self.table.event_timeout
        marks = (min(WATCH_INTERVAL, limit / 2), limit, limit + _grace(limit))
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            sent = anyio.current_time()
            call = runner.submit("ping")
            self._calls.add(call)
            for mark in marks:
                with anyio.move_on_after(sent + mark - anyio.current_time()):
                    await call.finished.wait()
                if call.finished.is_set():
                    break
                self._late, self._late_for = await runner.where(), mark
                if mark == limit:
                    log.error("plugin %s: its loop has not answered for %g s; its thread:\n%s",
                              self.name, mark, await runner.stack())
                self._refresh()
            if runner.ended is not None:
                self._failure("watchdog", None, f"the plugin's process has ended ({runner.ended})")
                self._trip("its process has ended")
                return
            if not call.finished.is_set():
                self._blocked = self._blocked or await runner.where()
                self._failure("watchdog", None, f"the plugin's loop did not answer within "
                              f"{marks[-1]:g} s: its thread is blocked at {self._blocked}")
                self._trip("its thread is blocked")
                return
            self._calls.discard(call)
            self.heartbeat_at = anyio.current_time()
            if self._late is not None:
                self._late = None
                self._refresh()

    async def _deliver(self) -> None:
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
            if self.scope != "admin":  # as its client's frames (Connection.encode)
                event = self.manager.app.sources.secrets.scrub_if_found(event)
            self._busy = True
            tag = event.__struct_config__.tag
            limit = self.table.event_timeout
            try:
                await self._within(limit, "on_event", event=event)
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
                self._succeeded()
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
        """Open the circuit breaker: the plugin is stopped (in the background) and failed,
        and tried again after the recovery delay."""
        log.error("plugin %s taken out of service: %s", self.name, why)
        self.manager.task_group.start_soon(self._open, why)

    async def _open(self, why: str) -> None:
        await self.stop(PluginState.FAILED, why)
        if self.state == PluginState.FAILED:
            self._schedule_recovery()

    async def drain(self) -> None:
        """Wait until the plugin has handled what its queue holds (shutdown)."""
        while self.state in LIVE and (self._busy or (
                self._subscription is not None and self._subscription.pending)):
            self._caught_up = anyio.Event()
            await self._caught_up.wait()

    async def stop(self, final: PluginState = PluginState.DISABLED, why: str = "") -> None:
        """Cancel the plugin's tasks, then ``shutdown()`` under its deadline; shielded.
        Stopped by hand (``final`` disabled), no trial of the breaker follows."""
        if final == PluginState.DISABLED:
            self.reset_breaker()
        async with self._lock:
            if self.state not in LIVE and self.state != PluginState.STARTING:
                if final == PluginState.DISABLED and self.state == PluginState.FAILED:
                    self._set_state(final, why)
                return
            with anyio.CancelScope(shield=True):
                if self._scope is not None:
                    self._scope.cancel()
                await self._stopped.wait()
                self._close_subscription()
            self._set_state(final, why)

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            limit = self.table.shutdown_timeout
            try:
                await self._within(limit, "shutdown")
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
                table = plugin_table(name, raw)
            except PluginConfigError as exc:  # checked before the start: only on reload
                log.error("%s", exc)
                continue
            self.hosts[name] = PluginHost(self, name, table)
        enabled = [host for host in self.hosts.values() if host.table.enabled]
        for host in enabled:
            host.start_done = anyio.Event()  # a dependent may look before this start begins
        async with anyio.create_task_group() as starts:
            for host in enabled:
                starts.start_soon(host.start)

    async def wait_for_dependencies(self, host: PluginHost) -> tuple[str, bool] | None:
        """Wait until every plugin ``host`` depends on has started; if one is not
        configured, is part of a cycle or did not start, why (and whether a retry of the
        breaker could help)."""
        for name in host.depends_on:
            needed = self.hosts.get(name)
            head = f"[plugins.{host.name}]: depends on {name!r}"
            if needed is None or not needed.table.enabled:
                what = "not configured" if needed is None else "disabled (enabled = false)"
                return f"{head}, which is {what} in config.toml; add [plugins.{name}] or remove {host.name}", False
            if needed is host or self._waits_on(needed, host.name):
                return f"{head}, which depends on {host.name!r} in turn; break the cycle of depends_on", False
            if needed.state not in LIVE and needed.start_done is not None:
                host.waiting_for = name
                await needed.start_done.wait()
                host.waiting_for = None
            if needed.state not in LIVE:
                why = f" ({needed.last_error})" if needed.last_error else ""
                return f"{head}, which is {needed.state}{why}", True
        return None

    def _waits_on(self, host: PluginHost, name: str) -> bool:
        seen = set()
        while host.waiting_for is not None and host.name not in seen:
            if host.waiting_for == name:
                return True
            seen.add(host.name)
            following = self.hosts.get(host.waiting_for)
            if following is None:
                return False
            host = following
        return False

    async def shutdown(self, deadline: float) -> None:
        """Let each plugin handle ``DaemonShutdown`` (and what precedes it), within
        ``deadline`` seconds, then stop them: dependents before what they depend on."""
        async with anyio.create_task_group() as drains:
            for host in self.hosts.values():
                drains.start_soon(self._drain_one, host, deadline)
        for wave in shutdown_waves({name: host.depends_on for name, host in self.hosts.items()}):
            async with anyio.create_task_group() as stops:
                for name in wave:
                    stops.start_soon(self.hosts[name].stop)

    @staticmethod
    async def _drain_one(host: PluginHost, deadline: float) -> None:
        with anyio.move_on_after(deadline):
            await host.drain()

    def call_scope(self, name: str, command: str) -> Scope:
        """The scope a client needs for ``command`` of plugin ``name``: what the plugin
        declares, ``admin`` when it does not (a plugin that is not running: ``read``,
        so the caller learns that it is not running)."""
        plugin_class = self.get(name).plugin_class
        if plugin_class is None:
            return "read"
        return plugin_class.call_scopes.get(command, "admin")

    async def call(self, name: str, command: str, args: dict[str, Any]) -> Any:
        """Run a plugin's own command; RequestError for a refusal, a plugin not running,
        a failure or a timeout."""
        from .errors import RequestError

        host = self.get(name)
        starting = host.start_done
        if host.state == PluginState.STARTING and starting is not None:
            with anyio.move_on_after(host.table.call_timeout):  # its process may take a moment
                await starting.wait()
        if host.state not in LIVE or host._runner is None:
            raise RequestError(ErrorCode.UNSUPPORTED, f"plugin {name!r} is {host.state}, not running"
                               + (f" ({host.last_error})" if host.last_error else ""))
        try:
            result = await host._within(host.table.call_timeout, "call", args={"command": command, "args": args})
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
        host._succeeded()
        return result

    def get(self, name: str) -> PluginHost:
        host = self.hosts.get(name)
        if host is None:
            from .errors import RequestError
            from .handlers.plugins import not_configured

            known = ", ".join(sorted(self.hosts)) or "none is configured"
            raise RequestError.not_found(not_configured(name, f"configured: {known}") if self.hosts else not_configured(name))
        return host

    def pids(self) -> set[int]:
        """The processes running plugin code (the server refuses their own connections)."""
        return {host.pid for host in self.hosts.values() if host.pid is not None}

    def infos(self) -> list[PluginInfo]:
        return [self.hosts[name].info() for name in sorted(self.hosts)]

    async def act(self, name: str, action: str) -> PluginInfo:
        host = self.get(name)
        if action == "restart":
            await self._restart(host)
            return host.info()
        if action == "disable":
            await host.stop(PluginState.DISABLED, f"{action} requested")
        if action == "enable":
            host.reset_breaker()
            await host.start()
        return host.info()

    def _dependents(self, name: str) -> list[PluginHost]:
        """The live plugins that depend on ``name``, directly or through one another."""
        found: dict[str, PluginHost] = {}
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for other in self.hosts.values():
                if (current in other.depends_on and other.name != name and other.name not in found
                        and other.state in LIVE):
                    found[other.name] = other
                    frontier.append(other.name)
        return list(found.values())

    async def _restart(self, host: PluginHost) -> None:
        """Stop the plugin and the running plugins that depend on it (dependents first),
        then start them all again with their code as it is on disk now (checked against
        the pin again): a dependent's init always follows its dependency's."""
        group = [host, *self._dependents(host.name)]
        names = {member.name for member in group}
        for wave in shutdown_waves({m.name: tuple(d for d in m.depends_on if d in names) for m in group}):
            async with anyio.create_task_group() as stops:
                for name in wave:
                    why = "restart requested" if name == host.name else f"restart of {host.name} requested"
                    stops.start_soon(self.hosts[name].stop, PluginState.DISABLED, why)
        installed = installed_plugins()
        for member in group:
            member.delivered = member.dropped = member.failed = 0
            member.last_error = None
            entry = installed.get(member.name)
            if entry is not None:
                log.info("plugin %s: re-importing its code (%s)", member.name,
                         ", ".join(forget_modules(entry)) or "not loaded")
            member.reset_breaker()
            member.start_done = anyio.Event()  # a dependent may look before this start begins
        async with anyio.create_task_group() as starts:
            for member in group:
                starts.start_soon(member.start)

    async def reconfigure(self, plugins: Mapping[str, Any]) -> list[str]:
        """New ``[plugins.*]`` tables (a reload): plugins added or enabled start, removed or
        disabled ones stop, changed settings are set and announced with PluginConfigured.
        A wrong table is refused (the plugin keeps its settings); the problems."""
        problems: list[str] = []
        installed = installed_plugins()
        starts: list[PluginHost] = []  # started together at the end: one may depend on another
        for name in sorted(set(self.hosts) | set(plugins)):
            host = self.hosts.get(name)
            if name not in plugins:
                if host is not None:
                    await host.stop(PluginState.DISABLED, "removed from config.toml")
                    del self.hosts[name]
                continue
            try:
                table = plugin_table(name, plugins[name])
                trust = self.app.settings.plugin_trust
                plugin_class = load_plugin(name, installed, trust) if table.enabled else None
                settings = plugin_settings(name, plugin_class, table.settings) if plugin_class else None
            except PluginConfigError as exc:
                problems.append(str(exc))
                continue
            if host is None:
                host = self.hosts[name] = PluginHost(self, name, table)
                if table.enabled:
                    starts.append(host)
                continue
            previous, host.table = host.table, table
            if plugin_class is not None:
                host.default_scope = plugin_class.default_scope
            changed = table != previous
            host.apply_limits()
            if table.recovery_timeout != previous.recovery_timeout:
                host.recovery_changed()
            if not table.enabled:
                await host.stop(PluginState.DISABLED, "disabled in config.toml")
            elif not previous.enabled:
                starts.append(host)  # enabled in config.toml (a run-time disable stays)
            elif changed and host._runner is not None and settings is not None:
                host._runner.configure(table.settings)
                self.app.bus.publish(PluginConfigured(plugin=name))
        for host in starts:
            host.start_done = anyio.Event()
        async with anyio.create_task_group() as started:
            for host in starts:
                started.start_soon(host.start)
        return problems

