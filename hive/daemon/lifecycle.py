"""Start, run and stop the daemon.

Start-up: settings → ``HIVE_HOME`` → pid lock → state store → socket → serve →
ready (pipe to ``hive start``, ``READY=1`` to systemd) → ``DaemonStarted``.
Shutdown (SIGTERM, SIGINT or a ``shutdown`` request): ``STOPPING=1`` →
``DaemonShutdown`` → the parts stop under a shielded deadline → the socket and the
pid file are removed. SIGHUP reloads the configuration.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc

from hive_client import (
    DaemonReloaded,
    DaemonShutdown,
    DaemonStarted,
    ErrorCode,
    LogLevelChanged,
    __version__,
)

from .allocator import fix_mmap_threshold
from .app import App, ShutdownRequest
from .errors import RequestError
from .events import EventBus
from .home import MAX_SOCKET_PATH, HiveHome
from .logs import LogHub
from .logsetup import configure_logging, set_level
from .pidlock import AlreadyRunning, PidLock
from .runner_registry import RunnerRegistry
from .server import SocketServer, bind_unix_socket
from .settings import DaemonSettings, SettingsError, load_settings
from .sources import SourceRegistry
from .store import StateStore, StateWriter, StoreError
from .supervision import Supervisor
from .systemd import Notifier, listen_fds

__all__ = ["StartupError", "run_daemon"]

log = logging.getLogger("hive.daemon")

# How long answers in flight and live streams get to finish before they are cut.
_PLUGIN_DRAIN_SECONDS = 5.0  # a plugin's time to handle DaemonShutdown
_DRAIN_SECONDS = 1.0
_OFFSET_SAVE_SECONDS = 5.0
_PROXY_DRAIN_SECONDS = 5.0  # proxied requests under way at shutdown


class StartupError(Exception):
    """The daemon cannot start; the message is for the user, as is."""


class _ReadyPipe:
    """Tells ``hive start`` (waiting on the other end) how start-up went."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode()[:4000] + b"\n")
            os.close(self._fd)
        except OSError:
            pass
        self._fd = None

    def ready(self, socket_path: Path) -> None:
        self._write(f"ready {socket_path}")

    def failed(self, message: str) -> None:
        self._write("error: " + message.replace("\n", " "))


def run_daemon(home_arg: str | None, *, foreground: bool, ready_fd: int | None = None) -> int:
    """Run the daemon until it is told to stop; the process exit code."""
    pipe = _ReadyPipe(ready_fd)
    home = HiveHome.resolve(home_arg)
    try:
        settings = load_settings(home.config_file)
    except SettingsError as exc:
        return _fail(pipe, str(exc), 2)
    group = settings.daemon.allowed_group
    try:
        gid = grp.getgrnam(group).gr_gid if group else None
    except KeyError:
        return _fail(pipe, f"daemon.allowed_group {group!r} is not a group on this machine "
                     f"(in {home.config_file})", 2)
    try:
        home.prepare(0o710 if gid is not None else 0o700, gid)
    except OSError as exc:
        return _fail(pipe, f"cannot prepare {home.root}: {exc.strerror or exc}", 1)
    configure_logging(
        settings.daemon.log_level,
        settings.daemon.log_format,
        None if foreground else home.daemon_log,
    )
    lock = PidLock(home.pid_file)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        return _fail(pipe, str(exc), 1)
    _raise_fd_limit()
    fix_mmap_threshold()  # memory of large client buffers returns once they are freed
    runners = RunnerRegistry(settings.runners)
    problems = runners.check_configured()
    if settings.plugins:
        from .plugins import check_plugin_settings  # only daemons with plugins pay for it

        problems += check_plugin_settings(settings)
    if problems:
        lock.release()
        return _fail(pipe, "; ".join(problems), 2)
    try:
        return anyio.run(
            _serve, home, settings, pipe, runners, backend="asyncio", backend_options=_backend_options()
        )
    except StartupError as exc:
        return _fail(pipe, str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.exception("the daemon failed")
        return _fail(
            pipe, f"internal error ({type(exc).__name__}: {exc}); {home.daemon_log} has the details", 70
        )
    finally:
        lock.release()


def _fail(pipe: _ReadyPipe, message: str, code: int) -> int:
    log.error("start-up failed: %s", message)
    pipe.failed(message)
    if not logging.getLogger("hive").handlers or pipe._fd is None:
        print(f"hive: {message}", file=sys.stderr)
    return code


def _backend_options() -> dict[str, object]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _raise_fd_limit() -> None:
    """Every service costs a few descriptors (pidfd, output file): allow many."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _open_socket(home: HiveHome, settings: DaemonSettings) -> tuple[socket.socket, Path, bool]:
    """The listening socket, its path, and whether we own (and later remove) it."""
    path = Path(settings.daemon.socket).expanduser() if settings.daemon.socket else home.socket
    inherited = listen_fds()
    if inherited:
        sock = socket.socket(fileno=inherited[0])
        name = sock.getsockname()
        return sock, Path(name) if isinstance(name, str) and name else path, False
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StartupError(
            f"the socket path {path} is {len(os.fsencode(path))} bytes, over the limit of "
            f"{MAX_SOCKET_PATH}; set HIVE_HOME (or daemon.socket in config.toml) to a shorter path"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale_socket(path)
    try:
        return bind_unix_socket(path, settings.daemon.allowed_group), path, True
    except KeyError:
        raise StartupError(
            f"daemon.allowed_group {settings.daemon.allowed_group!r} is not a group on this machine"
        ) from None
    except OSError as exc:
        raise StartupError(f"cannot listen on {path}: {exc.strerror or exc}") from exc


def _remove_stale_socket(path: Path) -> None:
    """A socket left by a killed daemon goes; a live one (another home) is refused."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path} exists and is not a socket; move it away and start again")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        log.info("removed a stale socket left by a previous daemon: %s", path)
        return
    except OSError as exc:
        raise StartupError(f"cannot check the existing socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise StartupError(f"another daemon is already listening on {path}")


async def _serve(home: HiveHome, settings: DaemonSettings, pipe: _ReadyPipe, runners: RunnerRegistry) -> int:
    notifier = Notifier.from_environ()
    try:
        store = await StateStore.open(home.state_db)
    except StoreError as exc:
        raise StartupError(str(exc)) from exc
    if settings.daemon.allowed_group:
        home.restrict_files()  # its members may enter the home for the socket, not read it
    owned_socket: Path | None = None
    try:
        sock, socket_path, owned = _open_socket(home, settings)
        owned_socket = socket_path if owned else None
        async with anyio.create_task_group() as daemon_tasks:
            bus, writer = EventBus(), StateWriter(store)
            logs = LogHub(home.logs_dir, home.run_dir, settings.logs)
            supervisor = Supervisor(
                tasks=daemon_tasks, runners=runners, bus=bus, logs=logs, store=store, writer=writer,
                home=home.root, settings=lambda: app.settings,
            )
            sources = SourceRegistry(home=home.root, store=store, bus=bus, logs=logs, supervisor=supervisor)
            app = App(
                home=home,
                settings=settings,
                socket_path=socket_path,
                bus=bus,
                store=store,
                state_writer=writer,
                logs=logs,
                task_group=daemon_tasks,
                services=supervisor,
                sources=sources,
            )
            app.reloader = _make_reloader(app, notifier, runners)
            server = SocketServer(
                app, sock, max_frame=settings.daemon.max_frame, max_inflight=settings.daemon.max_inflight
            )
            app.server = server
            # Handlers in place before READY: a SIGHUP right after must not kill us.
            await daemon_tasks.start(_handle_signals, app)
            await daemon_tasks.start(writer.run)
            await daemon_tasks.start(logs.run)
            await supervisor.load_persisted()
            await sources.load_all()
            # Adopt what a previous daemon left running before we say we are ready.
            await supervisor.resume(sources.loaded)
            from .proxy import ProxyServer  # after the services: its routes are theirs

            app.proxy = ProxyServer(app)
            supervisor.traffic = app.proxy.traffic  # a blue-green drain ends when blue is quiet
            await daemon_tasks.start(app.proxy.run)
            await daemon_tasks.start(server.serve)
            daemon_tasks.start_soon(notifier.run_watchdog)
            daemon_tasks.start_soon(_save_offsets, supervisor)
            log.info("listening on %s (pid %d, version %s)", socket_path, app.pid, __version__)
            pipe.ready(socket_path)
            notifier.ready(f"listening on {socket_path}")
            if settings.plugins:
                from .plugins import PluginManager

                app.plugins = PluginManager(app, daemon_tasks)
                await app.plugins.start_all()
            app.bus.publish(DaemonStarted(version=__version__, pid=app.pid))

            request = await app.wait_shutdown()
            log.info("shutting down (%s)", request.reason or "requested")
            notifier.stopping("shutting down")
            app.bus.publish(DaemonShutdown(graceful=request.graceful))
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(settings.daemon.shutdown_timeout) as deadline:
                    await _stop_parts(app, request)
                if deadline.cancelled_caught:
                    await _leave_running(app, settings.daemon.shutdown_timeout)
                app.bus.close()
                with anyio.move_on_after(_DRAIN_SECONDS):
                    await server.drain()
            daemon_tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
        if owned_socket is not None:
            owned_socket.unlink(missing_ok=True)
        notifier.close()
    log.info("stopped")
    return 0


async def _stop_parts(app: App, request: ShutdownRequest) -> None:
    """Stop what the daemon runs (services, plugins), in reverse order of start."""
    if app.proxy is not None:  # no new requests; those under way finish first
        await app.proxy.close(_PROXY_DRAIN_SECONDS)
    if app.plugins is not None:
        await app.plugins.shutdown(_PLUGIN_DRAIN_SECONDS)
    await app.sources.shutdown(keep_services=request.keep_services)
    await app.sources.close()
    await app.state_writer.flush()


async def _leave_running(app: App, timeout: float) -> None:
    """The shutdown deadline passed: what still runs stays up, its records and log
    offsets saved, for the next daemon to adopt (as after ``hive stop --keep-services``)."""
    left = [f"{i.fqn} (pid {i.handle.pid})" if i.handle is not None and i.handle.pid else i.fqn
            for i in app.services.all_records() if i.live]
    log.error("shutdown took over %g s (daemon.shutdown_timeout); cutting it short; "
              "left running for the next daemon to adopt: %s", timeout, ", ".join(left) or "nothing")
    for instance in app.services.all_records():
        if instance.live and instance.handle is not None:
            instance.handle.detach()  # the stop cancelled next must not kill it
    app.services.save_log_offsets()
    with anyio.move_on_after(_DRAIN_SECONDS):
        await app.state_writer.flush()


async def _save_offsets(supervisor: Supervisor) -> None:
    """Record how far service output was read, so a daemon killed with SIGKILL does not
    log the same lines twice when the next one adopts the services."""
    while True:
        await anyio.sleep(_OFFSET_SAVE_SECONDS)
        supervisor.save_log_offsets()


def _make_reloader(app: App, notifier: Notifier, runners: RunnerRegistry) -> Callable[[], Awaitable[str]]:
    async def reload() -> str:
        notifier.reloading()
        try:
            settings = load_settings(app.home.config_file)
        except SettingsError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            notifier.ready("reload failed; running on the previous configuration")
            app.bus.publish(DaemonReloaded(ok=False, message=str(exc)))
            raise RequestError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        set_level(settings.daemon.log_level)
        previous_level = app.settings.daemon.log_level
        app.settings = settings
        if settings.daemon.log_level != previous_level:
            app.bus.publish(LogLevelChanged(level=settings.daemon.log_level, previous=previous_level))
        app.logs.reconfigure(settings.logs)
        if app.proxy is not None:
            await app.proxy.reconfigure(settings.proxy)
        messages = ["configuration reloaded"]
        messages.extend(runners.reconfigure(settings.runners))
        if settings.plugins and app.plugins is None:
            from .plugins import PluginManager

            app.plugins = PluginManager(app, app.task_group)
        if app.plugins is not None:
            messages.extend(await app.plugins.reconfigure(settings.plugins))
        sources_message, sources_ok = await app.sources.reload_all()
        messages.append(sources_message)
        summary = "; ".join(messages)
        notifier.ready("reloaded")
        app.bus.publish(DaemonReloaded(ok=sources_ok, message=summary))
        if not sources_ok:
            # The rest is applied; the caller (and a script's exit code) learns what was not.
            log.error("reloaded in part: %s", summary)
            raise RequestError(ErrorCode.INVALID_CONFIG, summary)
        log.info("reloaded: %s", summary)
        return summary

    return reload


async def _handle_signals(
    app: App, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading")
                try:
                    await app.reload()
                except Exception as exc:  # the reload logged its own reason
                    log.debug("reload after SIGHUP failed: %s", exc)
            else:
                app.request_shutdown(ShutdownRequest(reason=signal.Signals(signum).name))
