"""The DNS responder's own wire code against dnspython, and against any bytes at all."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hive.config import ConfigError, load_project, parse_dns_upstream
from hive.daemon.dns.addresses import answer_addresses
from hive.daemon.dns.wire import (
    FORMERR,
    SERVFAIL,
    UDP_LIMIT,
    Malformed,
    address_answer,
    parse_query,
    rcode_answer,
)
from hive.daemon.settings import SettingsError, load_settings


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_any_bytes_parse_or_are_malformed(packet: bytes) -> None:
    rcode = parse_query_rcode(packet)
    if rcode is None:
        question = parse_query(packet)
        assert len(question.labels) <= 127 and question.end <= len(packet)
    elif rcode >= 0:
        answer = dns.message.from_wire(rcode_answer(packet, rcode))
        assert answer.rcode() == rcode and answer.flags & dns.flags.QR


@given(st.lists(st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=5),
       st.sampled_from(["A", "AAAA", "ANY", "TXT"]))
def test_an_answer_reads_back_with_dnspython(labels: list[str], rdtype: str) -> None:
    name = ".".join(labels)
    query = dns.message.make_query(name, rdtype, use_edns=True)
    packet = query.to_wire()
    question = parse_query(packet)
    assert question.name == name.lower()
    v4, v6 = answer_addresses(["127.0.0.1:8080", "[::]:8080"])
    chosen = {"A": v4, "AAAA": v6, "ANY": v4 + v6}.get(rdtype, [])
    answer = dns.message.from_wire(address_answer(question, packet, chosen, 60, UDP_LIMIT))
    assert answer.id == query.id and answer.question == query.question
    assert answer.flags & dns.flags.AA and answer.rcode() == dns.rcode.NOERROR
    got = sorted(item.to_text() for rrset in answer.answer for item in rrset)
    assert got == sorted({"A": ["127.0.0.1"], "AAAA": ["::1"], "ANY": ["127.0.0.1", "::1"]}.get(rdtype, []))
    failed = dns.message.from_wire(rcode_answer(packet, SERVFAIL, question))
    assert failed.rcode() == dns.rcode.SERVFAIL and failed.question == query.question


def test_an_answer_over_the_udp_limit_is_truncated() -> None:
    query = dns.message.make_query("a" * 60 + ".test", "A")
    packet = query.to_wire()
    many = [bytes([10, 0, i // 256, i % 256]) for i in range(40)]  # 40 * 16 bytes > 512
    answer = dns.message.from_wire(address_answer(parse_query(packet), packet, many, 60, UDP_LIMIT))
    assert answer.flags & dns.flags.TC and not answer.answer
    full = dns.message.from_wire(address_answer(parse_query(packet), packet, many, 60, None))  # TCP
    assert len(full.answer[0]) == 40


def test_addresses_follow_the_proxy_listeners() -> None:
    assert answer_addresses(["127.0.0.1:8080"]) == ([bytes([127, 0, 0, 1])], [])
    assert answer_addresses(["0.0.0.0:80", "10.0.0.5:8443"]) == ([bytes([127, 0, 0, 1]), bytes([10, 0, 0, 5])], [])
    v4, v6 = answer_addresses(["localhost:8080"])
    assert v4 == [bytes([127, 0, 0, 1])] and v6 == [bytes(15) + b"\x01"]
    assert parse_query_rcode(b"\x00\x01\x01\x00\x00\x02" + bytes(6)) == FORMERR


def parse_query_rcode(packet: bytes) -> int | None:
    """None: a query; -1: dropped; else the rcode of the error answer."""
    try:
        parse_query(packet)
    except Malformed as exc:
        return -1 if exc.rcode is None else exc.rcode
    return None


@pytest.mark.parametrize(("section", "message"), [
    ('listen = "15353"', "proxy.dns.listen: '15353' is not HOST:PORT (e.g. 127.0.0.1:15353)"),
    ('upstream = "dns.google:53"', "proxy.dns.upstream: 'dns.google:53' is not IP:PORT (e.g. 8.8.8.8:53 or "
                                   "[::1]:53): the upstream must be an IP address, not a host name"),
    ('upstream = "[::1]:99999"', "proxy.dns.upstream: '[::1]:99999': the port must be 1 to 65535"),
    ("max_inflight = 0", "proxy.dns: ttl must be 0 or more, timeout more than 0 seconds, max_inflight at least 1"),
])
def test_config_toml_dns_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[proxy.dns]\n{section}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}: {message}"


def test_config_toml_dns_defaults(tmp_path: Path) -> None:
    dns_settings = load_settings(tmp_path / "absent.toml").proxy.dns
    assert (dns_settings.listen, dns_settings.upstream, dns_settings.ttl) == ("127.0.0.1:15353", "8.8.8.8:53", 60)
    assert parse_dns_upstream("[2001:4860::8888]") == ("2001:4860::8888", 53)


def test_a_hive_yaml_upstream_must_be_an_ip_address(tmp_path: Path) -> None:
    (tmp_path / "hive.yaml").write_text('version: "1"\nproxy:\n  dns: {upstream: resolver.lan}\nservices: {}\n')
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert str(caught.value) == ("hive.yaml:3: proxy.dns.upstream: 'resolver.lan' is not IP:PORT (e.g. 8.8.8.8:53 "
                                 "or [::1]:53): the upstream must be an IP address, not a host name")
