"""The DNS responder: what it answers itself, what it forwards, and its listeners.

- A or AAAA (or ANY) for a route host: the proxy's addresses (:mod:`.addresses`), TTL
  ``[proxy.dns] ttl``. Another type for a route host: NODATA, never the upstream's
  answer, whose NXDOMAIN a resolver would apply to the host's A records too.
- Every other name: forwarded to the upstream, and its answer relayed unchanged. The
  responder owns no zone, so a name beside a route host (``www.`` of a real domain
  whose ``api.`` is routed) still gets the real answer.
- A query that cannot be read: FORMERR (NOTIMP for another opcode), or nothing for a
  datagram too short to answer or that is itself an answer.
- At most ``max_inflight`` forwards wait for the upstream; a UDP query past that is
  dropped (the client asks again), a TCP one gets SERVFAIL. Memory stays bounded
  under a flood: a forward is one socket and one timer.

The names and addresses are replaced whole on a change (one assignment each), so a
query sees either the old set or the new one.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ..settings import DnsSection
from .forward import UdpForward, tcp_forward
from .wire import (
    AAAA,
    ANY,
    CLASS_IN,
    SERVFAIL,
    UDP_LIMIT,
    A,
    Malformed,
    Question,
    address_answer,
    parse_query,
    rcode_answer,
)

__all__ = ["DnsCounts", "Responder"]

log = logging.getLogger("hive.proxy")

_TCP_IDLE = 10.0  # seconds a TCP client may keep a connection without a query
_QUIET = 10.0  # seconds between two log lines about the same trouble


@dataclass
class DnsCounts:
    answered: int = 0  # route hosts, answered here
    forwarded: int = 0  # the upstream's answers relayed
    failed: int = 0  # SERVFAIL: the upstream did not answer
    refused: int = 0  # malformed queries (FORMERR, NOTIMP, or dropped)
    dropped: int = 0  # over max_inflight: UDP ones dropped, TCP ones SERVFAIL


class Responder:
    def __init__(self, settings: DnsSection, upstream: tuple[str, int]) -> None:
        self.settings = settings
        self.upstream = upstream
        self.names: frozenset[tuple[bytes, ...]] = frozenset()
        self.v4: list[bytes] = []
        self.v6: list[bytes] = []
        self.counts = DnsCounts()
        self.inflight = 0
        self._logged: dict[str, float] = {}

    # --- what to answer -----------------------------------------------------------------

    def local(self, packet: bytes, limit: int | None) -> tuple[bytes | None, Question | None]:
        """``(answer, question)``: an answer of our own, or ``(None, question)`` to
        forward, or ``(None, None)`` to drop."""
        try:
            question = parse_query(packet)
        except Malformed as exc:
            self.counts.refused += 1
            return (rcode_answer(packet, exc.rcode) if exc.rcode is not None else None), None
        if question.labels not in self.names or question.qclass != CLASS_IN:
            return None, question
        self.counts.answered += 1
        addresses = {A: self.v4, AAAA: self.v6, ANY: self.v4 + self.v6}.get(question.qtype, [])
        return address_answer(question, packet, addresses, self.settings.ttl, limit), question

    def failure(self, packet: bytes, question: Question, why: str) -> bytes:
        self.counts.failed += 1
        host, port = self.upstream
        self.quietly("upstream", "dns: the upstream %s:%d failed (%s): SERVFAIL for %s and any others "
                     "within %g s; check [proxy.dns] upstream or the file's proxy.dns.upstream",
                     f"[{host}]" if ":" in host else host, port, why, question.name or ".", _QUIET)
        return rcode_answer(packet, SERVFAIL, question)

    def quietly(self, topic: str, message: str, *args: object) -> None:
        """Log ``message`` once per ``_QUIET`` seconds per topic (a flood is one line)."""
        now = time.monotonic()
        if now - self._logged.get(topic, -_QUIET) >= _QUIET:
            self._logged[topic] = now
            log.warning(message, *args)

    # --- UDP ------------------------------------------------------------------------------

    def datagram(self, transport: asyncio.DatagramTransport, packet: bytes, client: tuple[str | Any, int]) -> None:
        answer, question = self.local(packet, UDP_LIMIT)
        if answer is not None:
            transport.sendto(answer, client)
            return
        if question is None:
            return
        if self.inflight >= self.settings.max_inflight:
            self.counts.dropped += 1
            self.quietly("full", "dns: %d forwards wait for the upstream ([proxy.dns] max_inflight): "
                         "dropping queries until some are answered", self.inflight)
            return
        self.inflight += 1

        def done(relayed: bytes | None, why: str) -> None:
            self.inflight -= 1
            if relayed is not None:
                self.counts.forwarded += 1
            else:
                relayed = self.failure(packet, question, why)
            if not transport.is_closing():
                transport.sendto(relayed, client)

        UdpForward(asyncio.get_running_loop(), self.upstream, packet, question, self.settings.timeout, done)

    # --- TCP ------------------------------------------------------------------------------

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A TCP client's queries, in turn, each with its two-byte length."""
        while True:
            async with asyncio.timeout(_TCP_IDLE):
                (size,) = struct.unpack(">H", await reader.readexactly(2))
                packet = await reader.readexactly(size)
            answer, question = self.local(packet, None)
            if answer is None:
                if question is None:
                    return  # not worth an answer: end the connection
                answer = await self._forward_tcp(packet, question)
            writer.write(struct.pack(">H", len(answer)) + answer)
            await writer.drain()

    async def _forward_tcp(self, packet: bytes, question: Question) -> bytes:
        if self.inflight >= self.settings.max_inflight:
            self.counts.dropped += 1
            return rcode_answer(packet, SERVFAIL, question)
        self.inflight += 1
        try:
            answer = await tcp_forward(self.upstream, packet, question, self.settings.timeout)
        except TimeoutError:
            return self.failure(packet, question, f"no answer within {self.settings.timeout:g} s")
        except (OSError, asyncio.IncompleteReadError) as exc:
            return self.failure(packet, question, getattr(exc, "strerror", None) or str(exc) or "connection closed")
        finally:
            self.inflight -= 1
        self.counts.forwarded += 1
        return answer


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, responder: Callable[[], Responder]) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # (not a subclass of it)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._transport is None:
            return
        responder = self._responder()
        try:
            responder.datagram(self._transport, data, addr)
        except Exception:  # a bug must cost one query: asyncio would close the listener
            responder.counts.refused += 1
            log.exception("dns: a query from %s failed; the responder goes on", addr[0])

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about an earlier answer: nothing to do
