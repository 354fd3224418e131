"""The data model shared by the daemon, its clients and its plugins.

Every type here crosses the socket, so it follows the protocol's evolution rules:
a new field gets a default, unknown fields are ignored when decoding.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "ContainerUsage",
    "DaemonEvent",
    "DaemonReloaded",
    "DaemonShutdown",
    "DaemonStarted",
    "Event",
    "ExposedInfo",
    "HealthCheckResult",
    "InstanceOutcome",
    "LogLevel",
    "LogLevelChanged",
    "LogLine",
    "PluginConfigured",
    "PluginFailed",
    "PluginInfo",
    "PluginNotice",
    "PluginState",
    "PluginStateChanged",
    "RequestStat",
    "RolloutCompleted",
    "RolloutDrained",
    "RolloutHealthy",
    "RolloutRolledBack",
    "RolloutStarted",
    "RolloutSwitched",
    "ServiceCrashed",
    "ServiceExited",
    "ServiceHealthChanged",
    "ServiceInfo",
    "ServiceRestarting",
    "ServiceStarted",
    "ServiceState",
    "ServiceStateChanged",
    "ServiceStopped",
    "SourceAdded",
    "SourceChanged",
    "SourceInfo",
    "SourceRemoved",
    "event_kinds",
]


class ServiceState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    CRASHED = "crashed"
    EXITED = "exited"
    PORT_CONFLICT = "port_conflict"
    BACKOFF = "backoff"
    UNKNOWN = "unknown"  # its container engine is away: whether it still runs is not known
    DRAINING = "draining"  # an old generation of a blue-green rollout: finishes what it has


class LogLevel(StrEnum):
    """Log levels, ordered: ``trace < debug < info < notice < warn < error < fatal``."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    NOTICE = "notice"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]

    @classmethod
    def parse(cls, text: str) -> LogLevel:
        """Accepts the canonical names and the usual aliases (``warning``, ``err``, …)."""
        key = text.strip().lower()
        level = _LEVEL_ALIASES.get(key)
        if level is None:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown log level {text!r}; expected one of {names}")
        return level


_LEVEL_RANK = {level: rank for rank, level in enumerate(LogLevel)}
_LEVEL_ALIASES: dict[str, LogLevel] = {m.value: m for m in LogLevel} | {
    "warning": LogLevel.WARN,
    "err": LogLevel.ERROR,
    "critical": LogLevel.FATAL,
    "crit": LogLevel.FATAL,
    "panic": LogLevel.FATAL,
    "trc": LogLevel.TRACE,
    "dbg": LogLevel.DEBUG,
    "inf": LogLevel.INFO,
    "wrn": LogLevel.WARN,
}


class HealthCheckResult(msgspec.Struct, kw_only=True):
    """The last outcome of one health check of a service."""

    kind: str
    target: str = ""
    healthy: bool | None = None
    message: str = ""
    checked_at: datetime | None = None
    consecutive_failures: int = 0


class InstanceOutcome(msgspec.Struct, kw_only=True):
    """What a command (start, stop, restart, scale) did to one instance.

    ``result`` is ``done`` (it is as asked), ``failed`` (it is not, and will not be
    without another command; ``reason`` says why) or ``pending`` (not yet: it gets there
    by itself, e.g. once its engine is back).
    """

    fqn: str
    result: str  # "done" | "failed" | "pending"
    state: str  # its ServiceState when the answer was made
    reason: str | None = None


class ServiceInfo(msgspec.Struct, kw_only=True):
    """A service (or one instance of it) as the daemon sees it now."""

    fqn: str
    source: str
    name: str
    state: str
    healthy: bool | None = None
    pid: int | None = None
    container_id: str | None = None
    started_at: datetime | None = None
    ports: dict[str, int] = {}
    restart_count: int = 0
    # Beyond Hive's shape:
    instance: int | None = None
    runner: str = ""
    desired: str = "stopped"
    exit_code: int | None = None
    last_error: str | None = None
    health_checks: list[HealthCheckResult] = []
    instances: int = 1
    # A blue-green service's generation (1 for the first start) and the colour of its ports:
    # during a rollout both generations are listed.
    generation: int | None = None
    color: str | None = None
    # Seconds it has run, measured on the daemon's monotonic clock when it answered (a
    # wall clock stepped back never makes it negative); None when not running.
    uptime_secs: float | None = None


class SourceInfo(msgspec.Struct, kw_only=True):
    name: str
    path: str
    source_type: str  # "yaml" | "sqlite"
    enabled: bool
    service_count: int
    status: str  # "loaded" | "running" | "stopped" | "error"
    error: str | None = None
    owner: str | None = None  # the plugin that decides what of it runs after a restart


class LogLine(msgspec.Struct, kw_only=True):
    timestamp: datetime
    level: str
    service_fqn: str
    message: str
    fields: dict[str, Any] | None = None
    stream: str = "stdout"  # "stdout" | "stderr" | "hive" (the daemon's own notes)


class ExposedInfo(msgspec.Struct, kw_only=True):
    name: str
    source: str
    service: str
    has_secret: bool
    vars: list[str]
    consumers: list[str] = []
    healthy: bool | None = None
    port_names: list[str] = []  # the provider's ports, for {{uses.ALIAS.port.NAME}}


# --- Events -------------------------------------------------------------------------


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every bus event. ``seq`` increases by one per event, daemon-wide."""

    seq: int = 0
    timestamp: datetime | None = None


class DaemonStarted(Event, tag="daemon_started"):
    version: str
    pid: int


class DaemonShutdown(Event, tag="daemon_shutdown"):
    graceful: bool = True


class DaemonReloaded(Event, tag="daemon_reloaded"):
    ok: bool = True
    message: str = ""


class SourceAdded(Event, tag="source_added"):
    name: str
    path: str = ""
    source_type: str = ""


class SourceRemoved(Event, tag="source_removed"):
    name: str


class SourceChanged(Event, tag="source_changed"):
    """A source was reloaded, enabled or disabled."""

    name: str
    change: str  # "reloaded" | "enabled" | "disabled" | "reload_failed"
    message: str = ""


class ServiceStarted(Event, tag="service_started"):
    fqn: str
    pid: int | None = None
    container_id: str | None = None
    # A blue-green service's generation the instance belongs to (both run during a
    # rollout, under one fqn); None for other services.
    generation: int | None = None


class ServiceStopped(Event, tag="service_stopped"):
    fqn: str
    exit_code: int | None = None
    # A blue-green service's generation the instance belongs to (both run during a
    # rollout, under one fqn); None for other services.
    generation: int | None = None


class ServiceExited(Event, tag="service_exited"):
    """The service ended by itself with status 0."""

    fqn: str
    exit_code: int | None = 0


class ServiceCrashed(Event, tag="service_crashed"):
    fqn: str
    exit_code: int | None
    signal: int | None = None
    message: str = ""


class ServiceRestarting(Event, tag="service_restarting"):
    fqn: str
    attempt: int
    delay: float


class ServiceWaiting(Event, tag="service_waiting"):
    """A starting instance waits: for a dependency or a used service (``reason``:
    ``waiting for proj:db``), or no longer (``reason`` empty)."""

    fqn: str
    reason: str = ""


class ServiceHealthChanged(Event, tag="service_health_changed"):
    fqn: str
    healthy: bool
    message: str = ""
    # A blue-green service's generation the instance belongs to (both run during a
    # rollout, under one fqn); None for other services.
    generation: int | None = None


class ServiceStateChanged(Event, tag="service_state_changed"):
    fqn: str
    state: str
    previous: str
    # A blue-green service's generation the instance belongs to (both run during a
    # rollout, under one fqn); None for other services.
    generation: int | None = None


# A blue-green rollout, step by step (docs/proxy.md). ``generation`` numbers a service's
# generations of instances (1 for the first start); its ``color`` names the ports it runs on.


class RolloutStarted(Event, tag="rollout_started"):
    """Generation ``generation`` starts beside the one that serves, on its colour's ports."""

    fqn: str
    generation: int
    color: str


class RolloutHealthy(Event, tag="rollout_healthy"):
    """Every instance of the new generation is up and healthy."""

    fqn: str
    generation: int


class RolloutSwitched(Event, tag="rollout_switched"):
    """The proxy sends new requests to ``generation``; ``previous`` drains."""

    fqn: str
    generation: int
    previous: int


class RolloutDrained(Event, tag="rollout_drained"):
    """The old generation has nothing in flight, or its grace period is over: it is being stopped."""

    fqn: str
    generation: int


class RolloutCompleted(Event, tag="rollout_completed"):
    """The old generation is stopped; ``generation`` serves alone."""

    fqn: str
    generation: int


class RolloutRolledBack(Event, tag="rollout_rolled_back"):
    """The new generation failed (``reason``) and was stopped; ``serving`` serves (0: none,
    ``on_failure: abort`` stopped the old one too)."""

    fqn: str
    generation: int
    serving: int
    reason: str


class PluginFailed(Event, tag="plugin_failed"):
    """A plugin's ``init``, ``on_event`` or ``shutdown`` raised or timed out; ``disabled``:
    the circuit breaker took it out of service."""

    plugin: str
    message: str
    disabled: bool = False


class PluginStateChanged(Event, tag="plugin_state_changed"):
    plugin: str
    state: str  # PluginState
    previous: str
    message: str = ""


class PluginConfigured(Event, tag="plugin_configured"):
    """A reload gave the plugin new settings (delivered to that plugin too)."""

    plugin: str


class PluginNotice(Event, tag="plugin_notice"):
    """What a plugin reports (``emit_event``): an autoscaler's decision, a backup taken.
    ``plugin`` is set by the daemon from the connection, never by the plugin."""

    plugin: str
    kind: str
    fqn: str | None = None
    message: str = ""
    data: dict[str, Any] = {}


class LogLevelChanged(Event, tag="log_level_changed"):
    """A reload changed ``[daemon] log_level`` (plugins may follow it)."""

    level: str
    previous: str


class PluginState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"  # healthy: its loop answers the heartbeat, its last call succeeded
    DEGRADED = "degraded"  # its last call failed, or its heartbeat is late
    UNHEALTHY = "unhealthy"  # its loop has not answered for event_timeout (failed soon after)
    HALF_OPEN = "half_open"  # started again by the circuit breaker, on trial: one failure opens it again
    DISABLED = "disabled"  # by the user (`hive plugins disable`, enabled = false)
    FAILED = "failed"  # init failed, or the circuit breaker opened


class PluginInfo(msgspec.Struct, kw_only=True):
    """One core plugin as ``hive plugins`` shows it."""

    name: str
    version: str = ""
    distribution: str = ""
    state: PluginState
    scope: str = "operate"
    scope_from: str = "config"  # "config": [plugins.NAME] scope; "plugin": the plugin's default_scope
    delivered: int = 0  # events on_event handled
    dropped: int = 0  # events lost because its queue was full
    failed: int = 0  # on_event calls that raised or timed out
    last_error: str | None = None
    reason: str = ""  # why it is degraded, unhealthy, half open or failed
    heartbeat: float | None = None  # seconds since its loop last answered the watchdog
    retry_in: float | None = None  # failed: seconds until the breaker tries it again
    api_version: int = 0  # the manifest: the plugin API it is written for,
    capabilities: list[str] = []  # what it provides,
    depends_on: list[str] = []  # the plugins it needs running before its init
    isolation: str = "process"  # where its code runs: "process" (its own) or "thread" (the daemon's)
    pid: int | None = None  # its process while it is up (None on a thread)


class ContainerUsage(msgspec.Struct, kw_only=True):
    """What a container instance uses, by its engine's stats (``container_stats``)."""

    fqn: str
    cpu_seconds: float  # CPU time of the container since it started
    memory_bytes: int  # its memory, page cache it can give back excluded


class RequestStat(msgspec.Struct, kw_only=True):
    """The requests of one type the daemon answered since it started (``request_stats``)."""

    request: str  # its tag: "status", "list_services", ...
    count: int = 0
    errors: int = 0  # answered with an error
    seconds: float = 0.0  # their durations, summed
    buckets: list[int] = []  # cumulative: how many took at most each of the reply's bounds


DaemonEvent = (
    DaemonStarted
    | DaemonShutdown
    | DaemonReloaded
    | SourceAdded
    | SourceRemoved
    | SourceChanged
    | ServiceStarted
    | ServiceStopped
    | ServiceExited
    | ServiceCrashed
    | ServiceRestarting
    | ServiceWaiting
    | ServiceHealthChanged
    | ServiceStateChanged
    | RolloutStarted
    | RolloutHealthy
    | RolloutSwitched
    | RolloutDrained
    | RolloutCompleted
    | RolloutRolledBack
    | PluginFailed
    | PluginStateChanged
    | PluginConfigured
    | PluginNotice
    | LogLevelChanged
)


def event_kinds() -> list[str]:
    """The tag of every event type, for filters and completion."""
    return [cls.__struct_config__.tag for cls in DaemonEvent.__args__]
