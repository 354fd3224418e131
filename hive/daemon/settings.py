"""The daemon's own configuration: ``$HIVE_HOME/config.toml``.

Every key is optional. A typo is an error that names the key (``$.daemon.log_levle``),
because a silently ignored setting is worse than a refused start; ``[plugins.*]``
tables are free-form, each plugin validates its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["DaemonSettings", "DnsSection", "ProxySection", "SettingsError", "load_settings", "split_host_port"]


class SettingsError(Exception):
    """The configuration file is unreadable or invalid; the message says where."""


class DaemonSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    log_level: Literal["trace", "debug", "info", "warn", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Largest frame a client may send; larger ones are refused and the connection closed.
    max_frame: int = 8 * 1024 * 1024
    # Another socket path than $HIVE_HOME/hive.sock (must be short: 107 bytes at most).
    socket: str = ""
    # With an allowed group the socket is 0660 and owned by that group.
    allowed_group: str = ""
    # What the allowed group's members may ask (the daemon's own uid and root: admin).
    group_scope: Literal["read", "operate", "admin"] = "operate"
    # Concurrent requests one connection may have in flight before reading pauses.
    max_inflight: int = 64
    # How long a graceful shutdown may take before the rest is cut short.
    shutdown_timeout: float = 30.0
    # How long a starting service waits for each of its dependencies (depends_on, uses)
    # to become ready before its start fails.
    dependency_timeout: float = 60.0
    # Bounds on clients (see docs/configuration.md): streams one connection may hold open,
    # connections one uid may hold (the daemon's own uid and root are not counted).
    max_streams_per_connection: int = 256
    max_connections_per_uid: int = 64
    # Bytes queued for one client (log lines its streams have not taken, answers its
    # socket has not taken), and for all clients together; past either it is cut off.
    client_backlog_bytes: int = 32 * 1024 * 1024
    clients_backlog_total_bytes: int = 128 * 1024 * 1024
    # One log stream's queue of lines not yet sent; past it the oldest are dropped
    # (the client gets stream_lagged).
    stream_queue_bytes: int = 4 * 1024 * 1024
    # Seconds a started frame (or JSON line) may take to arrive in full, and a connection
    # with no request in flight and no stream open may stay silent (0: no limit).
    frame_timeout: float = 10.0
    idle_timeout: float = 300.0
    # Descriptors kept free for supervision: clients are turned away before they take them.
    reserved_fds: int = 64


class RestartSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Backoff defaults for every service (a service's ``restart`` mapping overrides)."""

    delay: float = 1.0
    max_delay: float = 60.0
    reset_after: float = 60.0
    jitter: bool = True
    # The start limit (systemd's StartLimitBurst and StartLimitIntervalSec): a service
    # restarted this many times within the interval is left crashed, with the reason,
    # until a command starts it. 0 turns the limit off.
    start_limit_burst: int = 5
    start_limit_interval: float = 60.0


class LogsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    buffer_lines: int = 10_000
    # All services' in-memory lines together (estimated); past it the busiest give up
    # their oldest lines down to an equal share. The log files keep everything.
    buffer_total_bytes: int = 256 * 1024 * 1024
    max_file_bytes: int = 10 * 1024 * 1024
    keep_files: int = 5
    max_line_bytes: int = 64 * 1024
    # Free space kept on the log files' file system: below it, rotated files go, oldest
    # first. None: 15 % of the file system, at most 4 GiB (journald's SystemKeepFree=).
    keep_free_bytes: int | None = None


class DnsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The proxy's DNS responder (docs/proxy.md, "DNS"): where it listens while a source
    has ``proxy.dns`` enabled, and how it forwards the names that are not routes."""

    listen: str = "127.0.0.1:15353"  # HOST:PORT, UDP and TCP
    upstream: str = "8.8.8.8:53"  # IP:PORT, unless a hive.yaml's proxy.dns.upstream says
    ttl: int = 60  # seconds, on the answers for route hosts
    timeout: float = 2.0  # for the upstream's answer; else SERVFAIL
    max_inflight: int = 100  # forwards waiting for the upstream; past it, queries are dropped


class ProxySection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The embedded HTTP proxy (docs/proxy.md): where it listens once a source declares
    routes, and the limits every request meets."""

    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    max_body: int = 10 * 1024 * 1024  # request body bytes; more is 413
    max_header_bytes: int = 32 * 1024  # request line and headers; more is 431
    header_timeout: float = 10.0  # to receive a request's headers; else 408
    idle_timeout: float = 75.0  # a kept-alive client connection with no request is closed
    connect_timeout: float = 3.0  # to connect to an instance; else the next one, or 502
    error_log_lines: int = 20  # log lines on the 502/503 page (0: none)
    # Who serves the routes: the daemon itself, or a caddy it starts and configures
    # through caddy's admin API (docs/proxy.md, "The Caddy backend").
    backend: Literal["embedded", "caddy"] = "embedded"
    caddy_command: str = "caddy"  # the caddy binary (a name on PATH, or a path)
    dns: DnsSection = msgspec.field(default_factory=DnsSection)


class TrustedPlugin(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One ``[[plugin_trust.allow]]`` entry (``hive plugins pin NAME`` prints it)."""

    distribution: str
    version: str
    sha256: str


class PluginTrust(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """With a ``[plugin_trust]`` table, only plugins whose distribution, version and files
    match an entry of ``allow`` are loaded."""

    allow: list[TrustedPlugin] = []


class DaemonSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    restart: RestartSection = msgspec.field(default_factory=RestartSection)
    logs: LogsSection = msgspec.field(default_factory=LogsSection)
    plugins: dict[str, dict[str, Any]] = {}
    plugin_trust: PluginTrust | None = None
    runners: dict[str, dict[str, Any]] = {}  # [runners.NAME]: each runner checks its own
    proxy: ProxySection = msgspec.field(default_factory=ProxySection)


def load_settings(path: Path) -> DaemonSettings:
    """Read ``path``; a missing file means all defaults."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return DaemonSettings()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        settings = msgspec.toml.decode(data, type=DaemonSettings)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    if settings.daemon.max_frame < 1024:
        raise SettingsError(f"{path}: daemon.max_frame must be at least 1024 bytes")
    if settings.restart.start_limit_burst < 0 or settings.restart.start_limit_interval < 0:
        raise SettingsError(f"{path}: restart.start_limit_burst and start_limit_interval must be 0 or more")
    if settings.daemon.dependency_timeout <= 0:
        raise SettingsError(f"{path}: daemon.dependency_timeout must be more than 0 seconds")
    if settings.daemon.max_inflight < 1:
        raise SettingsError(f"{path}: daemon.max_inflight must be at least 1")
    _check_bounds(path, settings.daemon)
    if settings.proxy.max_header_bytes < 1024:
        raise SettingsError(f"{path}: proxy.max_header_bytes must be at least 1024 bytes")
    for address in settings.proxy.listen:
        if not _host_port(address):
            raise SettingsError(f"{path}: proxy.listen: {address!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    _check_dns(path, settings.proxy.dns)
    return settings


def split_host_port(address: str) -> tuple[str, int]:
    """A ``HOST:PORT`` setting (checked at load) as (host without IPv6's brackets, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _check_dns(path: Path, dns: DnsSection) -> None:
    from hive.config import parse_dns_upstream

    if not _host_port(dns.listen):
        raise SettingsError(f"{path}: proxy.dns.listen: {dns.listen!r} is not HOST:PORT (e.g. 127.0.0.1:15353)")
    try:
        parse_dns_upstream(dns.upstream)
    except ValueError as exc:
        raise SettingsError(f"{path}: proxy.dns.upstream: {exc}") from exc
    if dns.ttl < 0 or dns.timeout <= 0 or dns.max_inflight < 1:
        raise SettingsError(f"{path}: proxy.dns: ttl must be 0 or more, timeout more than 0 seconds, "
                            "max_inflight at least 1")


def _check_bounds(path: Path, daemon: DaemonSection) -> None:
    at_least_one = ("max_streams_per_connection", "max_connections_per_uid", "client_backlog_bytes",
                    "clients_backlog_total_bytes", "stream_queue_bytes")
    for key in at_least_one:
        if getattr(daemon, key) < 1:
            raise SettingsError(f"{path}: daemon.{key} must be at least 1")
    for key in ("frame_timeout", "idle_timeout", "shutdown_timeout"):
        if getattr(daemon, key) < 0:
            raise SettingsError(f"{path}: daemon.{key} must be 0 or more seconds")
    if daemon.reserved_fds < 0:
        raise SettingsError(f"{path}: daemon.reserved_fds must be 0 or more")
