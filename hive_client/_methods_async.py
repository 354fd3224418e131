"""One typed method per request, for the async client.

``scripts/unasync.py`` generates ``_methods_sync.py`` from ``_methods_async.py``, and a
test keeps the two in step: edit the async one only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from ._messages import (
    AddSource,
    AddSourceResult,
    BuildService,
    ContainerStats,
    ContainerStatsReply,
    CreateService,
    DaemonStatus,
    DeleteService,
    DisableSource,
    EmitEvent,
    EnableSource,
    ExposedList,
    GetLogs,
    GetServiceStatus,
    ListExposed,
    ListPlugins,
    ListServices,
    ListSources,
    ListStates,
    LogBatch,
    Ok,
    Ping,
    PluginAction,
    PluginCall,
    PluginDetail,
    PluginList,
    PluginReply,
    Pong,
    Reload,
    ReloadPlan,
    ReloadSource,
    RemoveSource,
    Request,
    RequestStats,
    RequestStatsReply,
    Response,
    RestartService,
    ScaleService,
    ServiceDetail,
    ServiceList,
    ServiceStates,
    Shutdown,
    SourceList,
    StartService,
    StartSource,
    Status,
    StopService,
    StopSource,
    StreamLogs,
    SubscribeEvents,
    SubscribeServices,
    UpdateService,
)
from ._models import (
    ContainerUsage,
    DaemonEvent,
    ExposedInfo,
    InstanceOutcome,
    LogLine,
    PluginInfo,
    ServiceInfo,
    SourceInfo,
)
from ._streams import EVENTS, LOG_LINES, SERVICE_UPDATES, AsyncStream, StreamKind

__all__ = ["AsyncRequestMethods"]

R = TypeVar("R", bound=Response)
T = TypeVar("T")


class AsyncRequestMethods:
    """Typed requests over an abstract ``_call`` / ``_open_stream`` transport."""

    async def _call(self, request: Request, expect: type[R], timeout: float | None) -> R:
        raise NotImplementedError

    def _open_stream(self, request: Request, kind: StreamKind[T]) -> AsyncStream[T]:
        raise NotImplementedError

    # --- daemon ---------------------------------------------------------------------

    async def ping(self, *, timeout: float | None = None) -> None:
        """Round trip to the daemon; raises if it does not answer."""
        await self._call(Ping(), Pong, timeout)

    async def status(self, *, timeout: float | None = None) -> DaemonStatus:
        return await self._call(Status(), DaemonStatus, timeout)

    async def request_stats(self, *, timeout: float | None = None) -> RequestStatsReply:
        """How many requests of each type the daemon answered (errors among them) and
        how long they took: a cumulative histogram over ``bounds``."""
        return await self._call(RequestStats(), RequestStatsReply, timeout)

    async def container_stats(self, fqns: list[str] | None = None, *,
                              timeout: float | None = None) -> list[ContainerUsage]:
        """CPU and memory of container instances without a host pid, from their engines'
        stats (``fqns``: only these; an instance whose engine does not answer is left out)."""
        return (await self._call(ContainerStats(fqns=fqns or []), ContainerStatsReply, timeout)).containers

    async def shutdown(
        self, *, graceful: bool = True, keep_services: bool = False, timeout: float | None = None
    ) -> None:
        """Ask the daemon to stop; it answers before it begins shutting down."""
        await self._call(Shutdown(graceful=graceful, keep_services=keep_services), Ok, timeout)

    async def reload(self, *, timeout: float | None = None) -> str | None:
        """Re-read the daemon's configuration and every source, as SIGHUP does."""
        return (await self._call(Reload(), Ok, timeout)).message

    # --- sources --------------------------------------------------------------------

    async def list_sources(self, *, timeout: float | None = None) -> list[SourceInfo]:
        return (await self._call(ListSources(), SourceList, timeout)).sources

    async def add_source(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        start: bool = False,
        owner: str | None = None,
        timeout: float | None = None,
    ) -> AddSourceResult:
        request = AddSource(path=os.fspath(path), name=name, start=start, owner=owner)
        return await self._call(request, AddSourceResult, timeout)

    async def remove_source(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(RemoveSource(name=name), Ok, timeout)

    async def reload_source(
        self, name: str, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReloadPlan:
        return await self._call(ReloadSource(name=name, dry_run=dry_run), ReloadPlan, timeout)

    async def enable_source(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(EnableSource(name=name), Ok, timeout)

    async def disable_source(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(DisableSource(name=name), Ok, timeout)

    async def start_source(
        self, name: str, services: Iterable[str] = (), *, timeout: float | None = None
    ) -> list[InstanceOutcome]:
        """Start a source's services (all, or those named); what became of each instance.
        One that did not come up raises ServiceFailed, whose ``outcomes`` say why."""
        return (await self._call(StartSource(name=name, services=list(services)), Ok, timeout)).outcomes

    async def stop_source(self, name: str, *, timeout: float | None = None) -> list[InstanceOutcome]:
        return (await self._call(StopSource(name=name), Ok, timeout)).outcomes

    # --- services -------------------------------------------------------------------

    async def list_services(
        self, source: str | None = None, *, timeout: float | None = None
    ) -> list[ServiceInfo]:
        return (await self._call(ListServices(source=source), ServiceList, timeout)).services

    async def list_states(
        self, source: str | None = None, *, timeout: float | None = None
    ) -> dict[str, str]:
        """Each instance's state by fqn (``source:name``, ``source:name#N``), sorted:
        the light form of ``list_services``."""
        return (await self._call(ListStates(source=source), ServiceStates, timeout)).states

    async def get_service_status(self, fqn: str, *, timeout: float | None = None) -> ServiceInfo:
        return (await self._call(GetServiceStatus(fqn=fqn), ServiceDetail, timeout)).service

    async def start_service(self, fqn: str, *, timeout: float | None = None) -> list[InstanceOutcome]:
        """Start a service (and what it depends on); what became of each instance. One
        that did not come up raises ServiceFailed, whose ``outcomes`` say why."""
        return (await self._call(StartService(fqn=fqn), Ok, timeout)).outcomes

    async def stop_service(self, fqn: str, *, timeout: float | None = None) -> list[InstanceOutcome]:
        return (await self._call(StopService(fqn=fqn), Ok, timeout)).outcomes

    async def restart_service(self, fqn: str, *, timeout: float | None = None) -> list[InstanceOutcome]:
        return (await self._call(RestartService(fqn=fqn), Ok, timeout)).outcomes

    async def create_service(
        self,
        source_id: str,
        name: str,
        config: Mapping[str, Any],
        *,
        start: bool = True,
        timeout: float | None = None,
    ) -> None:
        request = CreateService(source_id=source_id, name=name, config=dict(config), start=start)
        await self._call(request, Ok, timeout)

    async def update_service(
        self, fqn: str, patch: Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        await self._call(UpdateService(fqn=fqn, patch=dict(patch)), Ok, timeout)

    async def delete_service(self, fqn: str, *, timeout: float | None = None) -> None:
        await self._call(DeleteService(fqn=fqn), Ok, timeout)

    async def scale_service(
        self, fqn: str, instances: int, *, timeout: float | None = None
    ) -> list[InstanceOutcome]:
        """Run ``instances`` copies; scaling down stops the highest instances first."""
        return (await self._call(ScaleService(fqn=fqn, instances=instances), Ok, timeout)).outcomes

    async def build_service(self, fqn: str, *, timeout: float | None = None) -> str | None:
        """Run the service's build now; raises DaemonError (BUILD_FAILED) with its output."""
        return (await self._call(BuildService(fqn=fqn), Ok, timeout)).message

    async def list_exposed(self, *, timeout: float | None = None) -> list[ExposedInfo]:
        return (await self._call(ListExposed(), ExposedList, timeout)).exposed

    # --- core plugins ---------------------------------------------------------------

    async def list_plugins(self, *, timeout: float | None = None) -> list[PluginInfo]:
        return (await self._call(ListPlugins(), PluginList, timeout)).plugins

    async def enable_plugin(self, name: str, *, timeout: float | None = None) -> PluginInfo:
        """Start a disabled or failed plugin (``init`` runs again)."""
        return (await self._call(PluginAction(name=name, action="enable"), PluginDetail, timeout)).plugin

    async def disable_plugin(self, name: str, *, timeout: float | None = None) -> PluginInfo:
        """Shut a plugin down (``shutdown`` runs); it stays loaded, showing ``disabled``."""
        return (await self._call(PluginAction(name=name, action="disable"), PluginDetail, timeout)).plugin

    async def emit_event(
        self, kind: str, message: str = "", *, fqn: str | None = None,
        data: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> None:
        """Publish a ``plugin_notice{plugin, kind, fqn, message, data}`` event; the daemon
        names the plugin (or client) that sent it."""
        request = EmitEvent(kind=kind, message=message, fqn=fqn, data=dict(data or {}))
        await self._call(request, Ok, timeout)

    async def plugin_call(
        self, plugin: str, command: str, args: Mapping[str, Any] | None = None, *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` of core plugin ``plugin``; its result (JSON-like data)."""
        request = PluginCall(plugin=plugin, command=command, args=dict(args or {}))
        return (await self._call(request, PluginReply, timeout)).result

    async def restart_plugin(self, name: str, *, timeout: float | None = None) -> PluginInfo:
        """``shutdown`` then ``init`` again, with fresh counters and circuit breaker."""
        return (await self._call(PluginAction(name=name, action="restart"), PluginDetail, timeout)).plugin

    # --- logs and streams -----------------------------------------------------------

    async def get_logs(
        self,
        fqn: str | None = None,
        *,
        lines: int | None = None,
        since: datetime | None = None,
        level: str | None = None,
        timeout: float | None = None,
    ) -> list[LogLine]:
        request = GetLogs(fqn=fqn, lines=lines, since=since, level=level)
        return (await self._call(request, LogBatch, timeout)).logs

    def stream_logs(
        self, fqn: str | None = None, *, level: str | None = None, tail: int = 0
    ) -> AsyncStream[LogLine]:
        """Follow log lines; the ``tail`` most recent ones come first."""
        return self._open_stream(StreamLogs(fqn=fqn, level=level, tail=tail), LOG_LINES)

    def subscribe_events(
        self,
        kinds: Iterable[str] = (),
        *,
        fqn: str | None = None,
        since_seq: int | None = None,
    ) -> AsyncStream[DaemonEvent]:
        """Follow bus events, optionally by kind and FQN pattern, replaying from ``since_seq``."""
        request = SubscribeEvents(kinds=list(kinds), fqn=fqn, since_seq=since_seq)
        return self._open_stream(request, EVENTS)

    def subscribe_services(self, source: str | None = None) -> AsyncStream[ServiceInfo]:
        """The current services first, then every change to one of them."""
        return self._open_stream(SubscribeServices(source=source), SERVICE_UPDATES)
