"""The one dispatch point: each request type maps to exactly one handler.

A handler is ``async (ctx, request) -> Response`` (unary) or ``async (ctx, request,
sink) -> None`` (stream). ``inline`` handlers answer from memory without waiting on
anything, so the connection runs them without spawning a task (the round trip of
``status`` is the latency users feel); the others run concurrently, bounded per
connection.

Routes are made with :func:`unary` and :func:`stream`, which tie a request type to a
handler of that type: registering ``daemon.status`` for ``Ping`` is a mypy error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import anyio

from hive_client.protocol import Request, Response, StreamLagged

from .drop_oldest_queue import DropOldestQueue

if TYPE_CHECKING:
    from .app import App
    from .server import Connection

__all__ = [
    "ROUTES",
    "RequestContext",
    "Route",
    "Scope",
    "StreamCall",
    "StreamHandler",
    "StreamSink",
    "UnaryCall",
    "UnaryHandler",
    "may",
    "relay",
    "stream",
    "unary",
]

T = TypeVar("T")
Req = TypeVar("Req", bound=Request)


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


async def relay(sink: StreamSink, subscription: DropOldestQueue[T], item: Callable[[T], Response],
                lagged: Callable[[int], Response] | None = None) -> None:
    """Start the stream, then forward each item; a reader that fell behind is told how
    many it lost (``stream_lagged``, or what ``lagged`` makes of the count) before the
    next item. Ends when the feed closes or the client goes away."""
    if not await sink.start():
        return
    while True:
        try:
            value = await subscription.get()
        except anyio.EndOfStream:
            return
        dropped = subscription.take_dropped()
        if dropped and not await sink.send(
            lagged(dropped) if lagged else StreamLagged(stream_id=sink.stream_id, dropped=dropped)
        ):
            return
        if not await sink.send(item(value)):
            return


UnaryHandler = Callable[[RequestContext, Req], Awaitable[Response]]
"""A unary handler of one request type."""
StreamHandler = Callable[[RequestContext, Req, StreamSink], Awaitable[None]]
"""A stream handler of one request type."""
UnaryCall = Callable[[RequestContext, Request], Awaitable[Response]]
"""A unary handler as the connection calls it: with whatever request was routed to it."""
StreamCall = Callable[[RequestContext, Request, StreamSink], Awaitable[None]]


Scope = Literal["read", "operate", "admin"]
"""What a client may ask: ``read`` looks (status, lists, logs, events); ``operate`` starts,
stops, restarts and scales what is already configured; ``admin`` also changes what the
daemon would run (add, remove or reload a source, create, update, delete or build a
service, plugin commands that write files) and controls the daemon itself (shutdown,
reload, plugins). docs/protocol.md has the table."""

_SCOPE_RANK: dict[str, int] = {"read": 0, "operate": 1, "admin": 2}


def may(held: Scope, needed: Scope) -> bool:
    return _SCOPE_RANK[held] >= _SCOPE_RANK[needed]


@dataclass(frozen=True, slots=True)
class Route:
    """One request type and its handler: ``unary`` or ``stream``, never both."""

    request: type[Request]
    unary: UnaryCall | None = None
    stream: StreamCall | None = None
    inline: bool = False
    scope: Scope = "operate"


def _misrouted(expected: type[Request], request: Request) -> TypeError:
    return TypeError(f"the {expected.__name__} route was given a {type(request).__name__}")


def unary(
    request: type[Req], handler: UnaryHandler[Req], *, inline: bool = False, scope: Scope = "operate"
) -> Route:
    # Not a coroutine itself: a plain call that hands back the handler's coroutine adds
    # no await to the round trip of inline requests.
    def call(ctx: RequestContext, message: Request) -> Awaitable[Response]:
        if not isinstance(message, request):
            raise _misrouted(request, message)
        return handler(ctx, message)

    return Route(request, unary=call, inline=inline, scope=scope)


def stream(request: type[Req], handler: StreamHandler[Req], *, scope: Scope = "operate") -> Route:
    def call(ctx: RequestContext, message: Request, sink: StreamSink) -> Awaitable[None]:
        if not isinstance(message, request):
            raise _misrouted(request, message)
        return handler(ctx, message, sink)

    return Route(request, stream=call, scope=scope)


def _build_routes() -> dict[type[Request], Route]:
    from hive_client import protocol as p

    from .handlers import daemon, events, plugins, services, sources, streams, usage

    routes = [
        unary(p.Ping, daemon.ping, inline=True, scope="read"),
        unary(p.Status, daemon.status, inline=True, scope="read"),
        unary(p.RequestStats, daemon.request_stats, inline=True, scope="read"),
        unary(p.ContainerStats, usage.container_stats, scope="read"),
        unary(p.Shutdown, daemon.shutdown, inline=True, scope="admin"),
        unary(p.Reload, daemon.reload, scope="admin"),
        unary(p.ListSources, sources.list_sources, inline=True, scope="read"),
        unary(p.AddSource, sources.add_source, scope="admin"),
        unary(p.RemoveSource, sources.remove_source, scope="admin"),
        unary(p.ReloadSource, sources.reload_source, scope="admin"),
        unary(p.EnableSource, sources.enable_source),
        unary(p.DisableSource, sources.disable_source),
        unary(p.StartSource, sources.start_source),
        unary(p.StopSource, sources.stop_source),
        unary(p.ListServices, services.list_services, inline=True, scope="read"),
        unary(p.ListStates, services.list_states, inline=True, scope="read"),
        unary(p.GetServiceStatus, services.get_service_status, inline=True, scope="read"),
        unary(p.StartService, services.start_service),
        unary(p.StopService, services.stop_service),
        unary(p.RestartService, services.restart_service),
        unary(p.CreateService, services.create_service, scope="admin"),
        unary(p.UpdateService, services.update_service, scope="admin"),
        unary(p.DeleteService, services.delete_service, scope="admin"),
        unary(p.ScaleService, services.scale_service),
        unary(p.BuildService, services.build_service, scope="admin"),
        unary(p.ListExposed, services.list_exposed, inline=True, scope="read"),
        unary(p.ListPlugins, plugins.list_plugins, inline=True, scope="read"),
        unary(p.PluginAction, plugins.plugin_action, scope="admin"),
        unary(p.EmitEvent, plugins.emit_event, inline=True),
        # Each command's scope is the plugin's (CorePlugin.call_scopes): checked by the handler.
        unary(p.PluginCall, plugins.plugin_call, scope="read"),
        unary(p.GetLogs, streams.get_logs, scope="read"),
        stream(p.StreamLogs, streams.stream_logs, scope="read"),
        stream(p.SubscribeServices, streams.subscribe_services, scope="read"),
        stream(p.SubscribeEvents, events.subscribe_events, scope="read"),
        unary(p.StopStream, streams.stop_stream, inline=True, scope="read"),
        unary(p.StopLogStream, streams.stop_hive_stream, inline=True, scope="read"),
        unary(p.StopServiceStream, streams.stop_hive_stream, inline=True, scope="read"),
    ]
    table = {route.request: route for route in routes}
    if len(table) != len(routes):
        raise RuntimeError("a request type has more than one route")
    return table


ROUTES: dict[type[Request], Route] = _build_routes()
