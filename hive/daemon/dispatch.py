"""The one dispatch point: each request type maps to exactly one handler.

A handler is ``async (ctx, request) -> Response`` (unary) or ``async (ctx, request,
sink) -> None`` (stream). ``inline`` handlers answer from memory without waiting on
anything, so the connection runs them without spawning a task (the round trip of
``status`` is the latency users feel); the others run concurrently, bounded per
connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import anyio

from hive_client.protocol import Request, Response, StreamLagged

from .drop_oldest_queue import DropOldestQueue

if TYPE_CHECKING:
    from .app import App
    from .server import Connection

__all__ = ["ROUTES", "RequestContext", "Route", "Scope", "StreamSink", "may", "relay"]

T = TypeVar("T")


@dataclass(slots=True)
class RequestContext:
    app: App
    connection: Connection
    request_id: int


class StreamSink(Protocol):
    stream_id: str

    async def start(self) -> bool:
        """Answer ``stream_started``: call it once the request is known to be valid."""
        ...

    async def send(self, item: Response) -> bool:
        """Push one item; False once the client is gone."""
        ...


async def relay(sink: StreamSink, subscription: DropOldestQueue[T], item: Callable[[T], Response]) -> None:
    """Start the stream, then forward each item; a reader that fell behind is told how
    many it lost (``stream_lagged``) before the next item. Ends when the feed closes or
    the client goes away."""
    if not await sink.start():
        return
    while True:
        try:
            value = await subscription.get()
        except anyio.EndOfStream:
            return
        dropped = subscription.take_dropped()
        if dropped and not await sink.send(StreamLagged(stream_id=sink.stream_id, dropped=dropped)):
            return
        if not await sink.send(item(value)):
            return


UnaryHandler = Callable[[RequestContext, Any], Awaitable[Response]]
StreamHandler = Callable[[RequestContext, Any, StreamSink], Awaitable[None]]


Scope = Literal["read", "operate", "admin"]
"""What a client may ask: ``read`` looks (status, lists, logs, events); ``operate`` runs
services and sources (start, stop, scale, create, reload a source); ``admin`` also
controls the daemon itself (shutdown, reload, plugins)."""

_SCOPE_RANK: dict[str, int] = {"read": 0, "operate": 1, "admin": 2}


def may(held: Scope, needed: Scope) -> bool:
    return _SCOPE_RANK[held] >= _SCOPE_RANK[needed]


@dataclass(frozen=True, slots=True)
class Route:
    unary: UnaryHandler | None = None
    stream: StreamHandler | None = None
    inline: bool = False
    scope: Scope = "operate"


def _build_routes() -> dict[type[Request], Route]:
    from hive_client import protocol as p

    from .handlers import daemon, events, plugins, services, sources, streams

    return {
        p.Ping: Route(daemon.ping, inline=True, scope="read"),
        p.Status: Route(daemon.status, inline=True, scope="read"),
        p.Shutdown: Route(daemon.shutdown, inline=True, scope="admin"),
        p.Reload: Route(daemon.reload, scope="admin"),
        p.ListSources: Route(sources.list_sources, inline=True, scope="read"),
        p.AddSource: Route(sources.add_source),
        p.RemoveSource: Route(sources.remove_source),
        p.ReloadSource: Route(sources.reload_source),
        p.EnableSource: Route(sources.enable_source),
        p.DisableSource: Route(sources.disable_source),
        p.StartSource: Route(sources.start_source),
        p.StopSource: Route(sources.stop_source),
        p.ListServices: Route(services.list_services, inline=True, scope="read"),
        p.ListStates: Route(services.list_states, inline=True, scope="read"),
        p.GetServiceStatus: Route(services.get_service_status, inline=True, scope="read"),
        p.StartService: Route(services.start_service),
        p.StopService: Route(services.stop_service),
        p.RestartService: Route(services.restart_service),
        p.CreateService: Route(services.create_service),
        p.UpdateService: Route(services.update_service),
        p.DeleteService: Route(services.delete_service),
        p.ScaleService: Route(services.scale_service),
        p.BuildService: Route(services.build_service),
        p.ListExposed: Route(services.list_exposed, inline=True, scope="read"),
        p.ListPlugins: Route(plugins.list_plugins, inline=True, scope="read"),
        p.PluginAction: Route(plugins.plugin_action, scope="admin"),
        p.EmitEvent: Route(plugins.emit_event, inline=True),
        p.PluginCall: Route(plugins.plugin_call),
        p.GetLogs: Route(streams.get_logs, scope="read"),
        p.StreamLogs: Route(stream=streams.stream_logs, scope="read"),
        p.SubscribeServices: Route(stream=streams.subscribe_services, scope="read"),
        p.SubscribeEvents: Route(stream=events.subscribe_events, scope="read"),
        p.StopStream: Route(streams.stop_stream, inline=True, scope="read"),
        p.StopLogStream: Route(streams.stop_stream, inline=True, scope="read"),
    }


ROUTES: dict[type[Request], Route] = _build_routes()
