"""Connections to instances, and the pool that keeps them open between requests.

An :class:`UpstreamConnection` carries one exchange at a time: it writes the request the
exchange gives it and parses the response (httptools), handing the head, body pieces and
end back. After a complete response on a keep-alive connection it goes back to the pool,
so a busy route pays for a TCP connect once, not per request. After a ``101`` it becomes
a byte tunnel to the client (WebSocket).

The pool also counts, per instance port, what is in flight there: connections carrying an
exchange or a tunnel, and exchanges connecting (reserved before the connect task runs, so
no request is between counts). A blue-green drain waits for its old generation's ports to
reach zero (:meth:`Pool.quiet`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from .upstreams import Target

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["Pool", "Tunnel", "UpstreamConnection"]

_IDLE_PER_TARGET = 64


class Tunnel(Protocol):
    """The other side of an upgraded connection."""

    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: Pool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.reused = False
        self.open = False
        self.busy = False  # counted in flight by the pool (an exchange or a tunnel holds it)
        self._headers: list[tuple[bytes, bytes]] = []

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_write(data)
            return
        if self.exchange is None:  # nothing asked: an instance talking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if rest and self.tunnel is not None:
                self.tunnel.tunnel_write(rest)
        except httptools.HttpParserError as exc:
            exchange, self.exchange = self.exchange, None
            self.close()
            if exchange is not None:
                exchange.upstream_failed(f"the instance sent an invalid response ({exc})")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel_closed()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading()

    # --- httptools ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            status = self.parser.get_status_code()
            exchange.response_head(status, self._headers, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_complete(self, self.parser.should_keep_alive())

    # --- for the exchange ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def become_tunnel(self, other: Tunnel) -> None:
        self.exchange = None
        self.tunnel = other

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def pause_reading(self) -> None:
        if self.transport is not None and self.open:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.open:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()


class Pool:
    def __init__(self) -> None:
        self._idle: dict[Target, list[UpstreamConnection]] = {}
        self._in_flight: Counter[int] = Counter()  # instance port -> exchanges and tunnels there
        self._quiet: asyncio.Event | None = None  # set when a port's count drops to zero

    def take(self, target: Target) -> UpstreamConnection | None:
        idle = self._idle.get(target)
        while idle:
            connection = idle.pop()
            if connection.open:
                connection.reused = True
                self._mark_busy(connection)
                return connection
        return None

    async def open(self, target: Target) -> UpstreamConnection:
        """A new connection, busy (its caller holds a :meth:`reserve` while it connects)."""
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: UpstreamConnection(self, target), target.host, target.port
        )
        self._mark_busy(connection)
        return connection

    def put(self, connection: UpstreamConnection) -> None:
        connection.exchange = None
        self._mark_idle(connection)
        idle = self._idle.setdefault(connection.target, [])
        if len(idle) < _IDLE_PER_TARGET and connection.open:
            idle.append(connection)
        else:
            connection.close()

    def discard(self, connection: UpstreamConnection) -> None:
        """``connection`` is closed: no longer idle, nor in flight."""
        self._mark_idle(connection)
        idle = self._idle.get(connection.target)
        if idle and connection in idle:
            idle.remove(connection)

    # --- what is in flight ---------------------------------------------------------------

    def reserve(self, targets: Collection[Target]) -> None:
        """An exchange is about to connect to one of ``targets``: they count as in flight."""
        self._in_flight.update(target.port for target in targets)

    def release(self, targets: Collection[Target]) -> None:
        for target in targets:
            self._less(target.port)

    def in_flight(self, ports: Collection[int]) -> int:
        return sum(self._in_flight[port] for port in ports)

    async def synced(self) -> None:
        """The embedded proxy reads the instances at each request: always in sync."""

    async def quiet(self, ports: Collection[int]) -> None:
        """Until nothing is in flight to ``ports`` (a blue-green drain: rollout.py)."""
        while self.in_flight(ports):
            if self._quiet is None:
                self._quiet = asyncio.Event()
            await self._quiet.wait()

    def _mark_busy(self, connection: UpstreamConnection) -> None:
        if not connection.busy:
            connection.busy = True
            self._in_flight[connection.target.port] += 1

    def _mark_idle(self, connection: UpstreamConnection) -> None:
        if connection.busy:
            connection.busy = False
            self._less(connection.target.port)

    def _less(self, port: int) -> None:
        left = self._in_flight[port] - 1
        if left > 0:
            self._in_flight[port] = left
            return
        self._in_flight.pop(port, None)
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.set()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
