"""The proxy's DNS responder as a part of the daemon: when and where it listens.

It listens on ``[proxy.dns] listen`` (UDP and TCP) while any loaded source has
``proxy.dns`` enabled, and stops when none has. The proxy calls :meth:`DnsServer.apply`
after each rebuild of its route table and after a reload of config.toml, so a route
host added or removed is answered, or no longer, from the next query on. A port that is
taken is one error (in the log and in ``hive status``); the rest of the daemon goes on,
and the next reload tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from hive.config import HiveConfig, parse_dns_upstream

from ..settings import DnsSection, split_host_port
from .addresses import answer_addresses
from .responder import DnsCounts, Responder, UdpListener

__all__ = ["DnsServer", "dns_wanted"]

log = logging.getLogger("hive.proxy")

_MAX_TCP = 64  # TCP clients at once; more are closed at once


def dns_wanted(projects: Iterable[tuple[str, HiveConfig]],
               default_upstream: str) -> tuple[bool, str, frozenset[str]]:
    """Whether any project enables ``proxy.dns``; the upstream: the first such file's
    ``upstream``, else config.toml's; and the conflicts to log."""
    enabled = False
    notes: set[str] = set()
    upstream: tuple[str, str] | None = None
    for source, config in projects:
        dns = config.proxy.dns
        if dns is None or not dns.enabled:
            continue
        enabled = True
        if dns.upstream is None:
            continue
        if upstream is None:
            upstream = (source, dns.upstream)
        elif parse_dns_upstream(dns.upstream) != parse_dns_upstream(upstream[1]):
            notes.add(f"dns: {source}: proxy.dns.upstream {dns.upstream} differs from {upstream[0]}'s "
                      f"{upstream[1]}: {upstream[0]}'s applies")
    return enabled, upstream[1] if upstream is not None else default_upstream, frozenset(notes)


class DnsServer:
    def __init__(self, settings: DnsSection) -> None:
        self.responder = Responder(settings, parse_dns_upstream(settings.upstream))
        self.address: str | None = None  # where it listens
        self.error: str | None = None  # why it does not listen, when it should
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._notes: frozenset[str] = frozenset()  # logged once, until they change

    @property
    def counts(self) -> DnsCounts:
        return self.responder.counts

    @property
    def upstream(self) -> str:
        host, port = self.responder.upstream
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def apply(self, *, enabled: bool, settings: DnsSection, upstream: str, hosts: Iterable[str],
                    listen: Iterable[str], notes: frozenset[str] = frozenset()) -> None:
        """The wanted state: ``hosts`` answered with the addresses of the proxy's
        ``listen``; listening on ``settings.listen`` if ``enabled``."""
        for note in sorted(notes - self._notes):
            log.warning("%s", note)
        self._notes = notes
        responder = self.responder
        responder.settings = settings
        responder.upstream = parse_dns_upstream(upstream)
        responder.names = frozenset(labels for labels in map(_labels, hosts) if labels)
        responder.v4, responder.v6 = answer_addresses(listen)
        if self.address is not None and (not enabled or self.address != settings.listen):
            self.close()
        if enabled and self.address is None:
            await self._open(settings.listen)
        elif not enabled:
            self.error = None

    async def _open(self, address: str) -> None:
        host, port = split_host_port(address)
        loop = asyncio.get_running_loop()
        try:
            udp, _ = await loop.create_datagram_endpoint(lambda: UdpListener(lambda: self.responder),
                                                         local_addr=(host, port))
            try:
                tcp = await asyncio.start_server(self._serve, host, port, reuse_address=True)
            except BaseException:
                udp.close()
                raise
        except OSError as exc:
            error = (f"cannot listen on {address}: {exc.strerror or exc}; free the port (`ss -lupn` and "
                     f"`ss -ltpn` show who holds it) or set [proxy.dns] listen in config.toml, then `hive reload`")
            if error != self.error:
                log.error("dns: %s", error)
            self.error = error
            return
        self._udp, self._tcp, self.address, self.error = udp, tcp, address, None
        log.info("dns: answering %d route hosts on %s (udp, tcp); other names go to %s",
                 len(self.responder.names), address, self.upstream)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= _MAX_TCP:
            writer.close()
            return
        self._clients.add(writer)
        try:
            await self.responder.stream(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client left, or was idle: its connection ends
        except Exception:  # a bug must cost one connection, never the listener
            log.exception("dns: a TCP query from %s failed; the responder goes on", writer.get_extra_info("peername"))
        finally:
            self._clients.discard(writer)
            writer.close()

    def close(self) -> None:
        """Stop listening; TCP clients are closed, forwards under way are not answered."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._clients):
            with contextlib.suppress(OSError):
                writer.close()
        if self.address is not None:
            log.info("dns: no longer listening on %s", self.address)
        self._udp = self._tcp = self.address = None


def _labels(host: str) -> tuple[bytes, ...]:
    """``Api.Example.test.`` -> ``(b"api", b"example", b"test")``; a non-ASCII name in
    its IDNA form, as it travels in DNS."""
    name = host.strip().rstrip(".").lower()
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        try:
            encoded = name.encode("idna")
        except UnicodeError:
            return ()
    return tuple(encoded.lower().split(b".")) if encoded else ()
