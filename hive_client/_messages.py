"""Requests and responses: one Struct per message, tagged by ``type`` (snake_case).

On the binary transport each frame carries ``[id, message]``; the id of a request
comes back on its response and on every item of a stream it opened. On the JSON-lines
transport the message travels bare, with no id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from ._models import (
    ContainerUsage,
    DaemonEvent,
    ExposedInfo,
    InstanceOutcome,
    LogLine,
    PluginInfo,
    RequestStat,
    ServiceInfo,
    SourceInfo,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AddSource",
    "AddSourceResult",
    "BuildService",
    "ContainerStats",
    "ContainerStatsReply",
    "CreateService",
    "DaemonStatus",
    "DeleteService",
    "DisableSource",
    "EmitEvent",
    "EnableSource",
    "Error",
    "EventItem",
    "ExposedList",
    "GetLogs",
    "GetServiceStatus",
    "Hello",
    "ListExposed",
    "ListPlugins",
    "ListServices",
    "ListSources",
    "ListStates",
    "LogBatch",
    "LogLineItem",
    "LogStream",
    "Ok",
    "Ping",
    "PluginAction",
    "PluginCall",
    "PluginDetail",
    "PluginList",
    "PluginReply",
    "Pong",
    "Reload",
    "ReloadPlan",
    "ReloadSource",
    "RemoveSource",
    "Request",
    "RequestMessage",
    "RequestStats",
    "RequestStatsReply",
    "Response",
    "ResponseMessage",
    "RestartService",
    "ScaleService",
    "ServiceDetail",
    "ServiceList",
    "ServiceStates",
    "ServiceStatusUpdate",
    "ServiceUpdate",
    "Shutdown",
    "SourceList",
    "StartService",
    "StartSource",
    "Status",
    "StopLogStream",
    "StopService",
    "StopServiceStream",
    "StopSource",
    "StopStream",
    "StreamEnded",
    "StreamLagged",
    "StreamLogs",
    "StreamStarted",
    "SubscribeEvents",
    "SubscribeServices",
    "UpdateService",
    "Welcome",
]

# Bumped only by a breaking change; additions ride on defaults and ignored fields.
PROTOCOL_VERSION = 1


class Request(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every request."""


class Response(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every response and stream item."""


# --- Requests -------------------------------------------------------------------------


class Hello(Request, tag="hello"):
    protocol: int
    client: str = ""


class Ping(Request, tag="ping"):
    pass


class Status(Request, tag="status"):
    pass


class Shutdown(Request, tag="shutdown"):
    graceful: bool = True
    keep_services: bool = False


class RequestStats(Request, tag="request_stats"):
    """How many requests of each type the daemon answered, and how long they took."""


class ContainerStats(Request, tag="container_stats"):
    """The CPU and memory of container instances, from their engines' stats: for those
    whose processes the host cannot see (no host pid). ``fqns``: only these instances."""

    fqns: list[str] = []


class Reload(Request, tag="reload"):
    """Re-read the daemon's configuration and reload every source (like SIGHUP)."""


class ListSources(Request, tag="list_sources"):
    pass


class AddSource(Request, tag="add_source"):
    path: str
    name: str | None = None
    start: bool = False
    # Who decides which of its services run after a daemon restart: a plugin's name
    # (the daemon then adopts what still runs and starts nothing), or None (the daemon
    # starts what was running). Adding a known path again with an owner sets it.
    owner: str | None = None


class RemoveSource(Request, tag="remove_source"):
    name: str


class ReloadSource(Request, tag="reload_source"):
    name: str
    dry_run: bool = False


class EnableSource(Request, tag="enable_source"):
    name: str


class DisableSource(Request, tag="disable_source"):
    name: str


class StartSource(Request, tag="start_source"):
    name: str
    services: list[str] = []


class StopSource(Request, tag="stop_source"):
    name: str


class ListServices(Request, tag="list_services"):
    source: str | None = None


class ListStates(Request, tag="list_states"):
    """Only the state of each instance: what a script polling for "all running" needs,
    a tenth of ``list_services``'s bytes."""

    source: str | None = None


class GetServiceStatus(Request, tag="get_service_status"):
    fqn: str


class StartService(Request, tag="start_service"):
    fqn: str


class StopService(Request, tag="stop_service"):
    fqn: str


class RestartService(Request, tag="restart_service"):
    fqn: str


class CreateService(Request, tag="create_service"):
    source_id: str
    name: str
    config: dict[str, Any]
    start: bool = True


class UpdateService(Request, tag="update_service"):
    fqn: str
    patch: dict[str, Any]


class DeleteService(Request, tag="delete_service"):
    fqn: str


class ScaleService(Request, tag="scale_service"):
    """Run ``instances`` copies of a service (0 stops them all, keeping it wanted)."""

    fqn: str
    instances: int


class BuildService(Request, tag="build_service"):
    """Run the service's build step now, whatever its ``when`` says."""

    fqn: str


class ListExposed(Request, tag="list_exposed"):
    pass


class ListPlugins(Request, tag="list_plugins"):
    pass


class EmitEvent(Request, tag="emit_event"):
    """Publish a ``plugin_notice`` event on the bus (core plugins report with it)."""

    kind: str
    message: str = ""
    fqn: str | None = None
    data: dict[str, Any] = {}


class PluginCall(Request, tag="plugin_call"):
    """Run a command a core plugin offers (``hive backup now`` is ``backup``/``now``)."""

    plugin: str
    command: str
    args: dict[str, Any] = {}


class PluginAction(Request, tag="plugin_action"):
    """``enable``, ``disable`` or ``restart`` a core plugin, without restarting the daemon."""

    name: str
    action: Literal["enable", "disable", "restart"]


class GetLogs(Request, tag="get_logs"):
    fqn: str | None = None
    lines: int | None = None
    since: datetime | None = None
    level: str | None = None


class StreamLogs(Request, tag="stream_logs"):
    fqn: str | None = None
    level: str | None = None
    tail: int = 0


class SubscribeServices(Request, tag="subscribe_services"):
    source: str | None = None


class SubscribeEvents(Request, tag="subscribe_events"):
    kinds: list[str] = []
    fqn: str | None = None
    since_seq: int | None = None


class StopStream(Request, tag="stop_stream"):
    stream_id: str


class StopLogStream(Request, tag="stop_log_stream"):
    """Hive's way to end a log stream: answered ``stream_ended`` (not ``ok``), and the
    stream sends no second ``stream_ended``."""

    stream_id: str


class StopServiceStream(Request, tag="stop_service_stream"):
    """Hive's way to end a ``subscribe_services`` stream; answered like
    :class:`StopLogStream`."""

    stream_id: str


RequestMessage = (
    Hello
    | Ping
    | Status
    | Shutdown
    | Reload
    | RequestStats
    | ContainerStats
    | ListSources
    | AddSource
    | RemoveSource
    | ReloadSource
    | EnableSource
    | DisableSource
    | StartSource
    | StopSource
    | ListServices
    | ListStates
    | GetServiceStatus
    | StartService
    | StopService
    | RestartService
    | CreateService
    | UpdateService
    | DeleteService
    | ScaleService
    | BuildService
    | ListExposed
    | ListPlugins
    | PluginAction
    | EmitEvent
    | PluginCall
    | GetLogs
    | StreamLogs
    | SubscribeServices
    | SubscribeEvents
    | StopStream
    | StopLogStream
    | StopServiceStream
)


# --- Responses ------------------------------------------------------------------------


class Welcome(Response, tag="welcome"):
    protocol: int
    version: str
    pid: int
    features: list[str] = []


class Ok(Response, tag="ok", omit_defaults=True):
    message: str | None = None
    # Per instance, for start, stop, restart and scale (empty, and then not sent, for
    # other requests: the JSON-lines shapes stay Hive's).
    outcomes: list[InstanceOutcome] = []


class Error(Response, tag="error", omit_defaults=True):
    code: str
    message: str
    # Per instance, when a start, stop, restart or scale did not do all it was asked.
    outcomes: list[InstanceOutcome] = []


class Pong(Response, tag="pong"):
    pass


class DaemonStatus(Response, tag="status"):
    """Flat, as Hive's clients read it; the fields after ``uptime_secs`` are ours."""

    running: bool
    pid: int | None
    version: str
    source_count: int
    running_services: int
    total_services: int
    proxy_addresses: list[str] = []
    uptime_secs: int = 0
    socket: str = ""
    home: str = ""
    protocol: int = PROTOCOL_VERSION
    started_at: datetime | None = None
    clients: int = 0
    event_seq: int = 0
    # Why the daemon's state is not being saved (a full disk, ...); None while it is.
    # Changes keep working in memory and are written when a retry succeeds.
    state_error: str | None = None
    state_unsaved: int = 0  # rows waiting to be written
    state_failures: int = 0  # failed writes since the daemon started
    # What happened to state.db's file while the daemon ran (deleted, recreated), if anything.
    state_note: str | None = None
    log_write_errors: int = 0  # failed writes of log files (their lines were dropped)
    log_lines_dropped: int = 0  # lines not written to log files (kept in memory only)
    log_write_error: str | None = None  # why log files cannot be written now; None while they can
    log_subscriptions: int = 0  # live log streams open
    client_backlog_bytes: int = 0  # queued for clients, not yet taken (daemon.clients_backlog_total_bytes)
    # The proxy's DNS responder (hive.yaml's proxy.dns): where it listens (None: it does
    # not), where it forwards, why it cannot listen; and what it did with the queries.
    dns_address: str | None = None
    dns_upstream: str | None = None
    dns_error: str | None = None
    dns_answered: int = 0  # route hosts, answered by the daemon
    dns_forwarded: int = 0  # answers of the upstream relayed
    dns_failed: int = 0  # SERVFAIL: the upstream failed or was silent
    dns_refused: int = 0  # malformed queries (FORMERR, NOTIMP, or dropped)
    dns_dropped: int = 0  # queries dropped while [proxy.dns] max_inflight forwards waited
    # Why the proxy does not listen where it should (a port taken, a bad certificate, caddy
    # missing), one line per address; the daemon serves on and the next reload tries again.
    proxy_errors: list[str] = []


class SourceList(Response, tag="sources"):
    sources: list[SourceInfo]


class AddSourceResult(Response, tag="source_added"):
    name: str
    services: int = 0
    # With ``start``: what the start did to each instance.
    outcomes: list[InstanceOutcome] = []
    # What the file says that Hive does not do: "hive.yaml:8: warning: services.web...: ..."
    warnings: list[str] = []


class ReloadPlan(Response, tag="reload_plan"):
    name: str
    start: list[str] = []
    stop: list[str] = []
    restart: list[str] = []
    unchanged: list[str] = []
    applied: bool = False


class ServiceList(Response, tag="services"):
    services: list[ServiceInfo]


class ServiceStates(Response, tag="states"):
    states: dict[str, str]  # instance fqn -> state, in the order of list_services


class ServiceDetail(Response, tag="service"):
    service: ServiceInfo


class ExposedList(Response, tag="exposed"):
    exposed: list[ExposedInfo]


class RequestStatsReply(Response, tag="request_stats"):
    bounds: list[float]  # the histogram's upper bounds, in seconds (each stat's buckets follow them)
    requests: list[RequestStat]


class ContainerStatsReply(Response, tag="container_stats"):
    containers: list[ContainerUsage]


class PluginList(Response, tag="plugins"):
    plugins: list[PluginInfo]


class PluginReply(Response, tag="plugin_reply"):
    result: Any = None


class PluginDetail(Response, tag="plugin"):
    plugin: PluginInfo


class LogBatch(Response, tag="logs"):
    logs: list[LogLine]


class StreamStarted(Response, tag="stream_started"):
    stream_id: str


class LogLineItem(Response, tag="log_line"):
    stream_id: str
    line: LogLine


class LogStream(Response, tag="log_stream"):
    """A streamed log line as Hive's clients read it (the JSON-lines transport)."""

    stream_id: str
    line: LogLine


class EventItem(Response, tag="event"):
    stream_id: str
    event: DaemonEvent


class ServiceUpdate(Response, tag="service_update"):
    stream_id: str
    service: ServiceInfo


class ServiceStatusUpdate(Response, tag="service_status_update"):
    """Hive's service stream item (the JSON-lines transport): every service the stream
    watches, as it is now."""

    stream_id: str
    services: list[ServiceInfo]


class StreamLagged(Response, tag="stream_lagged"):
    """The reader fell behind: ``dropped`` items were discarded (oldest first)."""

    stream_id: str
    dropped: int


class StreamEnded(Response, tag="stream_ended"):
    stream_id: str
    reason: str = ""


ResponseMessage = (
    Welcome
    | Ok
    | Error
    | Pong
    | DaemonStatus
    | SourceList
    | AddSourceResult
    | ReloadPlan
    | ServiceList
    | ServiceStates
    | ServiceDetail
    | ExposedList
    | PluginList
    | PluginDetail
    | PluginReply
    | RequestStatsReply
    | ContainerStatsReply
    | LogBatch
    | StreamStarted
    | LogLineItem
    | LogStream
    | EventItem
    | ServiceUpdate
    | ServiceStatusUpdate
    | StreamLagged
    | StreamEnded
)
