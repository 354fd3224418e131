"""Forwarding to the upstream resolver: the query's bytes go out unchanged (its id too),
and the upstream's answer comes back unchanged.

Each UDP forward has a socket of its own, so its source port is the kernel's random
choice, as dnsmasq does: a forged answer must guess the port as well as the id. The
socket is connected, so only the upstream can answer, and the answer must carry the
query's id and question. A forward is callbacks on the event loop, not a task: it costs
a socket and a timer, and the responder counts it before it sends.

An upstream that refuses (ICMP port unreachable) fails at once; one that is silent
fails after ``timeout``. Either way the client gets SERVFAIL, never silence.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from .wire import Question, same_question

__all__ = ["UdpForward", "tcp_forward"]

_MAX_MESSAGE = 65535


class UdpForward:
    """One query forwarded over UDP; ``done(answer, why)`` is called exactly once, with
    the upstream's answer, or with None and what failed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: tuple[str, int], packet: bytes,
                 question: Question, timeout: float, done: Callable[[bytes | None, str], None]) -> None:
        self._loop = loop
        self._packet = packet
        self._question = question
        self._done: Callable[[bytes | None, str], None] | None = done
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reading = False
        try:
            self._sock = socket.socket(socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.connect(upstream)
            self._sock.send(packet)
        except OSError as exc:
            self._finish(None, f"cannot send to {upstream[0]}:{upstream[1]}: {exc.strerror or exc}")
            return
        loop.add_reader(self._sock.fileno(), self._readable)
        self._reading = True
        self._timer = loop.call_later(timeout, self._finish, None, f"no answer within {timeout:g} s")

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            answer = self._sock.recv(_MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError as exc:  # ECONNREFUSED: nothing listens on the upstream's port
            self._finish(None, exc.strerror or str(exc))
            return
        if same_question(answer, self._question, self._packet):
            self._finish(answer, "")
        # else: a stray datagram; the real answer may still come

    def _finish(self, answer: bytes | None, why: str) -> None:
        done, self._done = self._done, None
        if done is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            if self._reading:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        done(answer, why)


async def tcp_forward(upstream: tuple[str, int], packet: bytes, question: Question, timeout: float) -> bytes:
    """A query forwarded over TCP (for a client that asked over TCP: a large answer);
    raises OSError or TimeoutError when the upstream fails."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
        try:
            writer.write(struct.pack(">H", len(packet)) + packet)
            while True:
                (size,) = struct.unpack(">H", await reader.readexactly(2))
                answer = await reader.readexactly(size)
                if same_question(answer, question, packet):
                    return answer
        finally:
            writer.close()
