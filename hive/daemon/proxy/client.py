"""One client's connection: parse its requests (httptools), queue them as exchanges.

An asyncio ``Protocol`` rather than a stream and a task: the parser's callbacks run right
in ``data_received``, and a request costs no task switch before it is on its way to an
instance (bench/proxy.py measures the added latency this keeps small).

Limits: the request line and headers may take ``max_header_bytes`` (431) and must arrive
within ``header_timeout`` (408); a body over ``max_body`` is 413; a connection with no
request for ``idle_timeout`` is closed. Writes to a slow client pause reading from its
instance, and the other way round, so no buffer grows without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from . import pages
from .exchange import Exchange

if TYPE_CHECKING:
    from .core import ProxyCore
    from .upstream import UpstreamConnection

__all__ = ["ClientConnection"]

log = logging.getLogger("hive.proxy")


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: the request was answered already."""


class ClientConnection(asyncio.Protocol):
    def __init__(self, core: ProxyCore, proto: bytes = b"http") -> None:
        self.core = core
        self.proto = proto  # X-Forwarded-Proto: b"https" on a TLS listener
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.queue: deque[Exchange] = deque()
        self.active: Exchange | None = None  # the exchange whose response is being written
        self.parsing: Exchange | None = None  # the exchange whose body is being read
        self.tunnel: UpstreamConnection | None = None
        self.upgrading: Exchange | None = None
        self.gone = False
        self.http11 = True
        self._closing = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._out: list[bytes] = []

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.core.connections.add(self)
        self._arm(self.core.settings.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_write(data)
            return
        if self.upgrading is not None:
            self.upgrading.tunnel_early(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.upgrading is not None:
                rest = data[upgrade.args[0] :]
                if rest:
                    self.upgrading.tunnel_early(rest)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                log.exception("proxy: a request broke the proxy's own code", exc_info=exc.__context__)
                self.abort()
        except httptools.HttpParserError as exc:
            self._refuse(400, f"the request is not valid HTTP/1.1 ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.core.connections.discard(self)
        if not self.core.connections and self.core.all_closed is not None:
            self.core.all_closed.set()
        self._disarm()
        for exchange in self.queue:
            exchange.abandon()
        self.queue.clear()
        self.active = self.parsing = None
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel_closed()

    def pause_writing(self) -> None:
        upstream = self.tunnel or (self.active.upstream if self.active is not None else None)
        if upstream is not None:
            upstream.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.tunnel or (self.active.upstream if self.active is not None else None)
        if upstream is not None:
            upstream.resume_reading()

    # --- httptools ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._arm(self.core.settings.header_timeout, self._headers_late)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.core.settings.max_header_bytes:
            self._refuse(431, f"the request line and headers are over {self.core.settings.max_header_bytes} bytes")
            raise _Refused

    def on_headers_complete(self) -> None:
        self._disarm()
        parser = self.parser
        self.http11 = parser.get_http_version() == "1.1"
        upgrade = parser.should_upgrade()
        exchange = Exchange(self, self.core, parser.get_method(), self._url, self._headers,
                            parser.should_keep_alive(), upgrade)
        self.parsing = exchange
        self.queue.append(exchange)
        if upgrade:
            self.upgrading = exchange
        if self.active is None:
            self.active = exchange
            exchange.start()
        elif len(self.queue) > 1:
            self.pause_reading()  # pipelined: one request ahead is enough

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.request_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.request_complete()

    # --- for exchanges ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queued, and sent once the current callback is done: a response's head and body
        that arrive in one read go out in one send, not two (bench/proxy.py)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.gone and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def finished(self, exchange: Exchange, keep_alive: bool) -> None:
        """``exchange``'s response is written; the next one's turn, or the end."""
        if self.active is not exchange:
            return
        self.queue.popleft()
        if self.upgrading is exchange:
            self.upgrading = None
        if not keep_alive or self._closing:
            self.active = None
            self.close()
            return
        self.active = self.queue[0] if self.queue else None
        if self.active is not None:
            self.active.start()
        else:
            self._arm(self.core.settings.idle_timeout, self._idle)
        self.resume_reading()

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        """The instance agreed to the upgrade: bytes pass through both ways from now on."""
        self.queue.clear()
        self.active = self.parsing = self.upgrading = None
        self.tunnel = upstream
        upstream.become_tunnel(self)
        self._disarm()

    def tunnel_write(self, data: bytes) -> None:
        self.write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused and not self.gone:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and not self.gone and len(self.queue) <= 1:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self._closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def close_when_idle(self) -> bool:
        """For a drain: close now if no request is under way; whether it was closed."""
        self._closing = True
        if self.active is None and self.tunnel is None and self.parsing is None:
            self.close()
            return True
        return False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def busy(self) -> bool:
        return self.active is not None or self.tunnel is not None

    # --- timers and refusals ---------------------------------------------------------------

    def _arm(self, seconds: float, then: object) -> None:
        self._disarm()
        assert callable(then)
        self._timer = asyncio.get_running_loop().call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> None:
        self._timer = None
        if self.active is None and self.tunnel is None:
            self.close()

    def _headers_late(self) -> None:
        self._timer = None
        self._refuse(408, f"the request's headers did not arrive within {self.core.settings.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """An answer to a request the proxy could not read; the connection then ends."""
        if self.active is not None and (self.active.response_started or self.active is not self.parsing):
            self.abort()  # a request ahead of it is under way: no answer can go in order
            return
        accept = next((v for n, v in self._headers if n.lower() == b"accept"), b"")
        body, content_type = pages.render(status, message, None, pages.wants_json(accept.decode("latin-1")))
        self.write(pages.response_bytes(status, body, content_type, keep_alive=False))
        for exchange in self.queue:
            exchange.abandon()
        self.queue.clear()
        self.active = self.parsing = None
        self.close()
