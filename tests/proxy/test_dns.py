"""The proxy's DNS responder (hive.yaml's ``proxy.dns``), through a real daemon on real
UDP and TCP sockets, with Debian's dnsmasq as the upstream (scripts/install-dnsmasq.sh).
Answers are read with dnspython, a parser independent of the daemon's."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from hive_client import BlockingClient, DaemonStatus
from tests.proxy.conftest import service_yaml, write_yaml
from tests.support import DaemonProcess, free_port, run_cli, start_daemon, wait_for

DNS_ON = "proxy: {dns: {enabled: true}}\n"


@dataclass
class Upstream:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _dnsmasq() -> str:
    found = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dnsmasq is not installed: run scripts/install-dnsmasq.sh")
        pytest.skip("dnsmasq is not installed (scripts/install-dnsmasq.sh)")
    return found


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """dnsmasq on a free port: www.example.test (and all of example.test) is 10.1.2.3."""
    port = free_port()
    process = subprocess.Popen(
        [_dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=",
         "--address=/example.test/10.1.2.3", "--log-facility=-"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "dnsmasq.log").open("wb"),
    )
    try:
        query = dns.message.make_query("www.example.test", "A")

        def answers() -> bool:
            try:
                return bool(dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2).answer)
            except dns.exception.Timeout:
                return False

        wait_for(answers, timeout=15, what="dnsmasq to answer")
        yield Upstream(port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Dns:
    daemon: DaemonProcess
    port: int  # the responder's UDP and TCP port
    proxy_port: int

    def client(self) -> BlockingClient:
        return BlockingClient(self.daemon.socket, timeout=30)

    def status(self) -> DaemonStatus:
        with self.client() as client:
            return client.status()

    def udp(self, name: str, rdtype: str = "A", timeout: float = 5.0) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=timeout)

    def tcp(self, name: str, rdtype: str = "A") -> dns.message.Message:
        return dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=5)

    def wait_listening(self) -> str:
        return wait_for(lambda: self.status().dns_address, timeout=15, what="the DNS responder to listen")

    def wait_answer(self, name: str, expected: list[str]) -> None:
        """Until ``name`` resolves to ``expected`` (a reload is applied after its event)."""
        wait_for(lambda: addresses(self.udp(name)) == expected, timeout=15, what=f"{name} -> {expected}")


def start_dns(home: Path, upstream: str, extra: str = "", timeout: float = 1.0) -> Dns:
    port, proxy_port = free_port(), free_port()
    (home / "config.toml").write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{proxy_port}"]\n'
        f'[proxy.dns]\nlisten = "127.0.0.1:{port}"\nupstream = "{upstream}"\ntimeout = {timeout}\n{extra}'
    )
    return Dns(start_daemon(home), port, proxy_port)


@pytest.fixture
def responder(hive_env: Path, upstream: Upstream) -> Iterator[Dns]:
    dns_daemon = start_dns(hive_env, upstream.address)
    try:
        yield dns_daemon
    finally:
        dns_daemon.daemon.stop()


def addresses(answer: dns.message.Message) -> list[str]:
    return [item.to_text() for rrset in answer.answer for item in rrset]


def raw_udp(packet: bytes, port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", port))
        return sock.recv(65535)


def route_project(directory: Path, *hosts: str, head: str = DNS_ON) -> Path:
    routes = "[" + ", ".join(f"{{host: {host}, path: /}}" for host in hosts) + "]"
    return write_yaml(directory, service_yaml("web", free_port(), routes), head)


def test_a_route_host_resolves_to_the_proxy_address(responder: Dns, tmp_path: Path) -> None:
    assert responder.status().dns_address is None  # no file enables proxy.dns yet
    with responder.client() as client:
        client.add_source(str(route_project(tmp_path / "p", "Api.MyApp.test")))
    assert responder.wait_listening() == f"127.0.0.1:{responder.port}"

    answer = responder.udp("API.myapp.TEST.")  # without regard to case
    assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
    assert addresses(answer) == ["127.0.0.1"]
    assert answer.answer[0].ttl == 60
    assert answer.question[0].name.to_text() == "API.myapp.TEST."  # echoed as asked
    assert addresses(responder.tcp("api.myapp.test")) == ["127.0.0.1"]
    # The proxy listens on IPv4 only: no AAAA, so no client tries ::1 first. Another
    # type is NODATA too, not the upstream's NXDOMAIN, which would hide the A record.
    for rdtype in ("AAAA", "HTTPS", "TXT"):
        empty = responder.udp("api.myapp.test", rdtype)
        assert (empty.rcode(), empty.answer) == (dns.rcode.NOERROR, []), rdtype

    for status in (run_cli("status"), run_cli("--timeout", "30", "status")):  # the lean CLI, the full one
        assert f"dns       127.0.0.1:{responder.port} (other names: 127.0.0.1:" in status.stdout, status.stdout
        assert f"proxy     127.0.0.1:{responder.proxy_port}" in status.stdout
    assert responder.status().dns_answered == 5


def test_a_reload_changes_the_answers(responder: Dns, upstream: Upstream, tmp_path: Path) -> None:
    project = route_project(tmp_path / "p", "one.myapp.test")
    with responder.client() as client:
        client.add_source(str(project))
        responder.wait_listening()
        assert addresses(responder.udp("one.myapp.test")) == ["127.0.0.1"]

        assert addresses(responder.udp("www.example.test")) == ["10.1.2.3"]  # the upstream's

        route_project(project, "two.myapp.test", "www.example.test")
        client.reload_source("p")
        responder.wait_answer("two.myapp.test", ["127.0.0.1"])
        assert addresses(responder.udp("www.example.test")) == ["127.0.0.1"]  # a route beats the upstream
        assert addresses(responder.udp("one.myapp.test")) == []  # forwarded now: dnsmasq has no such name

        route_project(project, "two.myapp.test")
        client.reload_source("p")
        responder.wait_answer("www.example.test", ["10.1.2.3"])

        # proxy.dns turned off: the responder stops, and its port is free again.
        route_project(project, "two.myapp.test", head="proxy: {dns: {enabled: false}}\n")
        client.reload_source("p")
        wait_for(lambda: responder.status().dns_address is None, timeout=15, what="the responder to stop")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", responder.port))


def test_other_names_are_forwarded_and_relayed_unchanged(responder: Dns, upstream: Upstream,
                                                         tmp_path: Path) -> None:
    with responder.client() as client:
        client.add_source(str(route_project(tmp_path / "p", "api.myapp.test")))
    responder.wait_listening()
    query = dns.message.make_query("www.example.test", "A")
    query.id = 0xBEEF
    relayed = raw_udp(query.to_wire(), responder.port)
    answer = dns.message.from_wire(relayed)
    assert answer.id == 0xBEEF and addresses(answer) == ["10.1.2.3"]
    assert relayed == raw_udp(query.to_wire(), upstream.port)  # byte for byte dnsmasq's (TTL 0, not 60)
    assert addresses(responder.tcp("deep.www.example.test")) == ["10.1.2.3"]
    assert responder.status().dns_forwarded == 2


def test_an_upstream_that_is_down_gives_servfail(hive_env: Path, tmp_path: Path) -> None:
    # One port nothing listens on (refused at once), one that never answers (1 s timeout).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    down = start_dns(hive_env, f"127.0.0.1:{free_port()}")
    try:
        with down.client() as client:
            client.add_source(str(route_project(tmp_path / "p", "api.myapp.test")))
        down.wait_listening()
        assert down.udp("www.example.test").rcode() == dns.rcode.SERVFAIL
        assert down.tcp("www.example.test").rcode() == dns.rcode.SERVFAIL
        assert addresses(down.udp("api.myapp.test")) == ["127.0.0.1"]  # route hosts need no upstream

        project = route_project(tmp_path / "p", "api.myapp.test",
                                head=f"proxy: {{dns: {{upstream: '127.0.0.1:{silent.getsockname()[1]}'}}}}\n")
        with down.client() as client:
            client.reload_source("p")
        wait_for(lambda: down.status().dns_upstream == f"127.0.0.1:{silent.getsockname()[1]}",
                 timeout=15, what="the file's upstream")
        answer = down.udp("www.example.test")  # within dnspython's 5 s: SERVFAIL, not silence
        assert answer.rcode() == dns.rcode.SERVFAIL
        assert silent.recv(512)  # the query did reach it
        assert down.status().dns_failed == 3
        assert "dns: the upstream" in down.daemon.stderr() and project.exists()
    finally:
        down.daemon.stop()
        silent.close()


def test_malformed_packets_leave_the_responder_answering(responder: Dns, tmp_path: Path) -> None:
    with responder.client() as client:
        client.add_source(str(route_project(tmp_path / "p", "api.myapp.test")))
    responder.wait_listening()
    header = struct.Struct(">HHHHHH")
    garbage = [
        b"", b"\x00", b"\x12" * 11,  # shorter than a header: dropped
        header.pack(1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # an answer: dropped
        header.pack(2, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2,  # two questions: FORMERR
        header.pack(3, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer loop: FORMERR
        header.pack(4, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 10,  # a label past the end: FORMERR
        header.pack(5, 0, 1, 0, 0, 0) + (b"\x3fa" + b"b" * 62) * 5 + b"\x00\x00\x01\x00\x01",  # > 255: FORMERR
        header.pack(6, 0x1000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # opcode 2 (status): NOTIMP
        header.pack(7, 0, 1, 0, 0, 0) + b"\x03api",  # the question cut short: FORMERR
        b"\xff\xf0" + os.urandom(698), bytes(range(256)),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for packet in garbage:
            sock.sendto(packet, ("127.0.0.1", responder.port))
        # Each answered one is answered in turn; the last query proves all were read.
        sock.sendto(dns.message.make_query("api.myapp.test", "A").to_wire(), ("127.0.0.1", responder.port))
        rcodes = {}
        while True:
            data = sock.recv(4096)
            if len(data) > 12:  # the errors are bare headers
                assert addresses(dns.message.from_wire(data)) == ["127.0.0.1"]
                break
            ident, flags = struct.unpack_from(">HH", data)
            rcodes[ident] = flags & 0xF
    assert {i: rcodes.get(i) for i in range(2, 8)} == {2: 1, 3: 1, 4: 1, 5: 1, 6: 4, 7: 1}
    # Over TCP: a bad length, garbage, a connection left half way; then a good query.
    for payload in (b"\x00\x05abcde", b"\x00", b"\xff\xff" + b"x" * 100, b"\x00\x0c" + header.pack(9, 0, 0, 0, 0, 0)):
        with socket.create_connection(("127.0.0.1", responder.port), timeout=5) as sock:
            sock.sendall(payload)
    assert addresses(responder.tcp("api.myapp.test")) == ["127.0.0.1"]
    assert responder.daemon.alive()
    assert responder.status().dns_refused >= 9


def test_a_taken_port_is_one_clear_error_and_a_reload_retries(hive_env: Path, tmp_path: Path) -> None:
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", port))
    (hive_env / "config.toml").write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{free_port()}"]\n[proxy.dns]\nlisten = "127.0.0.1:{port}"\n')
    daemon = start_daemon(hive_env)
    try:
        with BlockingClient(daemon.socket, timeout=30) as client:
            client.add_source(str(route_project(tmp_path / "p", "api.myapp.test")))
            error = wait_for(lambda: client.status().dns_error, timeout=15, what="the DNS error")
            assert error.startswith(f"cannot listen on 127.0.0.1:{port}: Address already in use; free the port")
            assert "[proxy.dns] listen in config.toml, then `hive reload`" in error
            assert client.status().dns_address is None
            assert client.list_sources()  # the daemon goes on
            client.reload()  # tries again: the same error is not logged again
            assert daemon.stderr().count("cannot listen on") == 1
            status = run_cli("status")
            assert f"dns       NOT LISTENING: cannot listen on 127.0.0.1:{port}" in status.stdout

            taken.close()
            client.reload()
            assert client.status().dns_address == f"127.0.0.1:{port}"
            assert client.status().dns_error is None
    finally:
        daemon.stop()
        taken.close()


def test_forwards_waiting_are_bounded(hive_env: Path, tmp_path: Path) -> None:
    """A flood towards a silent upstream: at most max_inflight forwards wait; the rest
    are dropped, and the daemon's own names are still answered."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    # A long timeout: no forward may end (and free its place) before the flood is read.
    flood = start_dns(hive_env, f"127.0.0.1:{silent.getsockname()[1]}", "max_inflight = 3\n", timeout=5.0)
    try:
        with flood.client() as client:
            client.add_source(str(route_project(tmp_path / "p", "api.myapp.test")))
        flood.wait_listening()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(30)
            for index in range(10):
                sock.sendto(dns.message.make_query(f"n{index}.example.test", "A").to_wire(),
                            ("127.0.0.1", flood.port))
            sock.sendto(dns.message.make_query("api.myapp.test", "A").to_wire(), ("127.0.0.1", flood.port))
            answers = [dns.message.from_wire(sock.recv(4096)) for _ in range(4)]
        outcomes = sorted((dns.rcode.to_text(a.rcode()), *addresses(a)) for a in answers)
        assert outcomes == [("NOERROR", "127.0.0.1"), ("SERVFAIL",), ("SERVFAIL",), ("SERVFAIL",)]
        status = flood.status()
        assert (status.dns_dropped, status.dns_failed, status.dns_answered) == (7, 3, 1)
        silent.setblocking(False)
        reached = 0
        with contextlib.suppress(BlockingIOError):
            while silent.recv(512):
                reached += 1
        assert reached == 3  # the seven others were never sent
        assert "max_inflight" in flood.daemon.stderr()
    finally:
        flood.daemon.stop()
        silent.close()
