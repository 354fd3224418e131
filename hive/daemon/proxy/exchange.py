"""One request's way through the proxy: to an instance and its response back.

An exchange is made when a request's headers are in. Its route and the head the instance
gets are decided then; body pieces that come before an instance is connected wait in
``pending`` (reading from the client pauses past the route's ``buffer_size``). Only the
exchange at the head of its connection's queue talks to an instance, so pipelined
requests are answered in order.

The instance is the next up one in turn; a reused pooled connection that turns out closed
before any response byte is retried once on a new connection (the request is still held
if it was small), and a refused connect moves on to the next instance. No instance up:
503; none reachable or one broke off: 502; no response head within the route's
``timeout``: 504. The three show the service's state and last log lines (:mod:`.pages`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import pages
from .routes import Route
from .upstream import UpstreamConnection
from .upstreams import Target
from .wire import LAST_CHUNK, RequestFacts, chunk, request_head, response_head

if TYPE_CHECKING:
    from .client import ClientConnection
    from .core import ProxyCore

__all__ = ["Exchange"]

log = logging.getLogger("hive.proxy")

_REPLAY_LIMIT = 64 * 1024  # request bytes kept to retry on a fresh connection
_NO_BODY = (204, 304)


class Exchange:
    __slots__ = (
        "_connecting", "_reserved", "_targets", "body_bytes", "chunked_out", "client", "core", "debug", "extra_headers",
        "facts", "keep_alive", "local", "method", "pending", "pending_size", "replay",
        "request_done", "response_started", "route", "timer", "until_close", "upgrade", "upstream",
    )

    def __init__(
        self, client: ClientConnection, core: ProxyCore, method: bytes, target: bytes,
        headers: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool,
    ) -> None:
        self.client = client
        self.core = core
        self.method = method
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.facts = RequestFacts(headers)
        self.route: Route | None = None
        self.debug: str | None = None  # "GET host/path", when its route's file has proxy.debug
        self.local: bytes | None = None  # the proxy's own answer, when it gives one
        self.extra_headers: list[tuple[bytes, bytes]] | None = None  # from plugins (CORS)
        self.pending: list[bytes] | None = []
        self.pending_size = 0
        self.replay: list[bytes] | None = None
        self.upstream: UpstreamConnection | None = None
        self.request_done = False
        self.response_started = False
        self.chunked_out = False
        self.until_close = False  # the response's body ends when the instance closes
        self.body_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._targets: list[Target] = []
        self._reserved: list[Target] | None = None  # counted in flight while it connects
        self._decide(target, headers)

    # --- decided at the head -------------------------------------------------------------

    def _decide(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        facts = self.facts
        limit = self.core.settings.max_body
        if facts.content_length > limit:
            self.answer(413, f"the request body is {facts.content_length} bytes; the limit is {limit}")
            return
        if facts.content_length == -2:
            self.answer(400, "invalid Content-Length")
            return
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError:
            self.answer(400, "the request target is not ASCII")
            return
        route = self.core.table.match(facts.host.decode("latin-1"), text)
        if route is None:
            self.answer(404, f"no route for {facts.host.decode('latin-1')}{text.partition('?')[0]}")
            return
        self.route = route
        if route.debug:
            self.debug = f"{self.method.decode('latin-1')} {facts.host.decode('latin-1')}{text}"
        chain = route.chain
        if chain:
            refusal = chain.on_request(self)
            if refusal is not None:
                status, message, extra = refusal
                self.answer(status, message, extra=extra)
                return
        upstream_target = route.upstream_target(text).encode("ascii") if route.strip_prefix else target
        head = request_head(
            self.method, upstream_target, headers, facts, peer=self.client.peer, proto=self.client.proto,
            upgrade=self.upgrade, edits=route.headers,
        )
        self.pending = [head]
        self.pending_size = len(head)

    def answer(self, status: int, message: str, *, report: bool = False,
               extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """The proxy answers this request itself (now, or when its turn comes)."""
        if self.debug is not None and self.route is not None:
            log.info("proxy: %s -> %s: %d from the proxy: %s", self.debug, self.route.service, status, message)
        detail = None
        if report and self.route is not None:
            service = self.core.upstreams.service(self.route.service)
            detail = self.core.report(self.route.service, service)
        if not self.request_done and (self.facts.content_length > 0 or self.facts.chunked):
            self.keep_alive = False  # the rest of its body is not read: the connection ends
        body, content_type = pages.render(status, message, detail, pages.wants_json(self.facts.accept.decode("latin-1")))
        if self.extra_headers:  # a plugin's (CORS): the proxy's own answers get them too
            extra = [*(extra or ()), *self.extra_headers]
        lines = b"".join(b"%b: %b\r\n" % pair for pair in extra) if extra else b""
        self.local = pages.response_bytes(status, body, content_type, keep_alive=self.keep_alive, extra=lines)
        self.pending = None
        if self.response_started or self.client.active is self:
            self._send_local()

    def _send_local(self) -> None:
        if self.response_started:  # too late for a page: the response is under way
            self.client.abort()
            return
        assert self.local is not None
        self.response_started = True
        self._cancel_timer()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        self.client.write(self.local)
        if self.request_done or not self.keep_alive:
            self.client.finished(self, self.keep_alive)
        # else: no body to come, the request's end is parsed next (request_complete)

    # --- its turn ------------------------------------------------------------------------

    def start(self) -> None:
        """Its turn to be forwarded: the connection's earlier exchanges are done."""
        if self.local is not None:
            self._send_local()
            return
        assert self.route is not None
        targets = self.core.upstreams.candidates(self.route)
        if not targets:
            what = "is not known to hive" if targets is None else "has no instance up"
            self.answer(503, f"service {self.route.service} {what}", report=True)
            return
        connection = self.core.pool.take(targets[0])
        if connection is not None:
            self._attach(connection)
            return
        self._begin_connect(targets)

    def _begin_connect(self, targets: list[Target]) -> None:
        """Connect in a task; meanwhile ``targets`` count as in flight (a drain waits)."""
        self._unreserve()
        self._targets = targets
        self._reserved = targets
        self.core.pool.reserve(targets)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _unreserve(self) -> None:
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            self.core.pool.release(reserved)

    async def _connect(self) -> None:
        try:
            await self._connect_to_one()
        finally:
            self._unreserve()  # the connection made, if any, counts itself

    async def _connect_to_one(self) -> None:
        assert self.route is not None
        errors = []
        for target in self._targets:
            try:
                async with asyncio.timeout(self.core.settings.connect_timeout):
                    connection = await self.core.pool.open(target)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{target.host}:{target.port}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timed out'}")
                continue
            self._connecting = None
            if self.client.gone:
                connection.close()
                return
            self._attach(connection)
            return
        self._connecting = None
        self.answer(502, f"no instance of {self.route.service} accepted a connection ({'; '.join(errors)})", report=True)

    def _attach(self, connection: UpstreamConnection) -> None:
        assert self.route is not None and self.pending is not None
        self.upstream = connection
        connection.exchange = self
        pending, self.pending = self.pending, None
        if connection.reused and self.pending_size <= _REPLAY_LIMIT:
            self.replay = list(pending)
        connection.write(b"".join(pending))
        self.pending_size = 0
        self.client.resume_reading()
        if not self.upgrade:
            self.timer = asyncio.get_running_loop().call_later(self.route.timeout, self._timed_out)

    # --- the request's body --------------------------------------------------------------

    def request_body(self, body: bytes) -> None:
        if self.local is not None:
            return  # answered already; the rest is not forwarded
        self.body_bytes += len(body)
        if self.body_bytes > self.core.settings.max_body:
            self.answer(413, f"the request body is over the limit of {self.core.settings.max_body} bytes")
            return
        data = chunk(body) if self.facts.chunked else body
        self._send_upstream(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.local is not None:
            if self.response_started and self.keep_alive:
                self.client.finished(self, True)  # answered by the proxy before its end
        elif self.facts.chunked:
            self._send_upstream(LAST_CHUNK)

    def _send_upstream(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            if self.replay is not None:
                self.replay.append(data)
                if sum(map(len, self.replay)) > _REPLAY_LIMIT:
                    self.replay = None
        elif self.pending is not None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.route is not None and self.pending_size > self.route.buffer_size:
                self.client.pause_reading()

    def tunnel_early(self, data: bytes) -> None:
        """Bytes the client sent after an upgrade request, before the instance agreed."""
        self._send_upstream(data)

    # --- the response --------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], upstream_keep_alive: bool) -> None:
        if 100 <= status < 200 and status != 101:
            self.client.write(response_head(status, headers, keep_alive=True, chunked=False, upgrade=False)
                              .replace(b"connection: keep-alive\r\n", b""))
            return
        self._cancel_timer()
        self.response_started = True
        self.replay = None
        upstream = self.upstream
        if self.debug is not None and self.route is not None:
            where = f"{upstream.target.host}:{upstream.target.port}" if upstream is not None else "?"
            log.info("proxy: %s -> %s at %s: %d", self.debug, self.route.service, where, status)
        if status == 101 and self.upgrade and upstream is not None:
            self.client.write(response_head(status, headers, keep_alive=True, chunked=False, upgrade=True))
            self.client.start_tunnel(self, upstream)
            return
        has_body = self.method != b"HEAD" and status not in _NO_BODY
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)
        chunked_in = any(name.lower() == b"transfer-encoding" for name, _ in headers)
        self.until_close = has_body and not framed
        if has_body and (chunked_in or not framed):
            if self.client.http11:
                self.chunked_out = True
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to the close
        self.client.write(response_head(status, headers, keep_alive=self.keep_alive,
                                        chunked=self.chunked_out, upgrade=False, extra=self.extra_headers))
        if self.method == b"HEAD" and upstream is not None:
            # httptools cannot be told a HEAD response has no body: end it here.
            self.response_complete(upstream, False)

    def response_body(self, body: bytes) -> None:
        self.client.write(chunk(body) if self.chunked_out else body)

    def response_complete(self, connection: UpstreamConnection, reusable: bool) -> None:
        if self.upstream is not connection:
            return
        self.upstream = None
        if self.chunked_out:
            self.client.write(LAST_CHUNK)
        if reusable and self.request_done:
            self.core.pool.put(connection)
        else:
            connection.exchange = None
            connection.close()
        self.client.finished(self, self.keep_alive and self.request_done)

    def upstream_lost(self, connection: UpstreamConnection) -> None:
        """The instance's connection closed under this exchange."""
        if self.upstream is not connection:
            return
        self.upstream = None
        if not self.response_started:
            if connection.reused and self.replay is not None:
                self._retry(connection.target)
                return
            self.upstream_failed("the instance closed the connection before it answered")
        elif self.until_close:  # the close ends the body: the response is complete
            if self.chunked_out:
                self.client.write(LAST_CHUNK)
            self.client.finished(self, self.keep_alive and self.request_done)
        else:
            self.client.abort()

    def _retry(self, target: Target) -> None:
        replay, self.replay = self.replay, None
        assert replay is not None
        self.pending, self.pending_size = replay, sum(map(len, replay))
        self._cancel_timer()
        self._begin_connect([target])

    def upstream_failed(self, message: str) -> None:
        self.upstream = None
        self._cancel_timer()
        if self.response_started:
            self.client.abort()
        else:
            self.answer(502, message, report=True)

    def _timed_out(self) -> None:
        self.timer = None
        assert self.route is not None
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        self.answer(504, f"{self.route.service} did not answer within {self.route.timeout:g} s", report=True)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def abandon(self) -> None:
        """The client went away: nothing of this exchange goes on."""
        self._cancel_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
            self._unreserve()  # (a task cancelled before it ran runs no finally)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
