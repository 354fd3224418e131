"""Routes by host and path, X-Forwarded-*, balancing, unhealthy instances, cocoons."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections import Counter
from pathlib import Path

from tests.proxy.conftest import Proxy, free_port, serve_four_routes, service_yaml, write_yaml
from tests.support import wait_for


def test_the_proxy_listens_once_a_source_declares_routes(proxy: Proxy, tmp_path: Path) -> None:
    with proxy.client() as client:
        assert client.status().proxy_addresses == []
        write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"))
        client.add_source(str(tmp_path / "p"))
        addresses = wait_for(lambda: client.status().proxy_addresses, what="the proxy to listen")
        assert addresses == [f"127.0.0.1:{proxy.port}"]


def test_routes_by_host_then_longest_path_and_sets_forwarded_headers(proxy: Proxy, tmp_path: Path) -> None:
    serve_four_routes(proxy, tmp_path / "p", "{path: /}", "/other")

    assert proxy.get("/api/users?id=1")[1].split()[::2] == [b"api", b"GET"]
    assert proxy.get("/api/users?id=1")[1].endswith(b" /users?id=1")  # the prefix stripped
    assert proxy.get("/api?x=1")[1].endswith(b" /?x=1")
    assert proxy.get("/api/admin/keys")[1].startswith(b"admin ")  # the longest prefix wins
    assert proxy.get("/apix")[1].startswith(b"fallback ")  # a prefix ends at a segment
    assert proxy.get("/api/x", Host="site.test:8080")[1].startswith(b"site ")  # host routes first
    assert proxy.get("/other", Host="elsewhere")[1].startswith(b"fallback ")

    status, _, body = proxy.request("GET", "/headers", headers={
        "Host": "site.test", "X-Forwarded-For": "10.0.0.9", "X-Forwarded-Proto": "https",
        "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
    })
    assert status == 200
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"  # appended to
    assert seen["x-forwarded-proto"] == "http"  # set by the proxy, the edge
    assert seen["x-forwarded-host"] == "site.test"
    assert seen["host"] == "site.test"
    assert "x-secret" not in seen and "keep-alive" not in seen  # hop-by-hop


def test_balances_over_instances_and_skips_an_unhealthy_one(proxy: Proxy, tmp_path: Path) -> None:
    write_yaml(tmp_path / "p", service_yaml("web", free_port(), "{path: /}"))
    with proxy.client() as client:
        client.add_source(str(tmp_path / "p"))
        client.start_source("p")
        client.scale_service("p:web", 3)

        def healthy_ports() -> dict[str, int]:
            found = {i.fqn: i.ports["http"] for i in client.list_services("p") if i.healthy}
            return found if len(found) == 3 else {}

        ports = wait_for(healthy_ports, timeout=30, what="three healthy instances")
        answered = Counter(int(proxy.get("/who")[1].split()[1]) for _ in range(30))
        assert set(answered) == set(ports.values())
        assert max(answered.values()) - min(answered.values()) <= 1  # in turn

        sick = ports["p:web#1"]
        urllib.request.urlopen(f"http://127.0.0.1:{sick}/sick", timeout=10).read()
        wait_for(lambda: client.get_service_status("p:web#1").healthy is False, timeout=30,
                 what="p:web#1 to be unhealthy")
        answered = Counter(int(proxy.get("/who")[1].split()[1]) for _ in range(20))
        assert sick not in answered
        assert set(answered) == set(ports.values()) - {sick}


def test_cocoon_route_reaches_the_cocoon_service(proxy: Proxy, home: Path) -> None:
    port = free_port()
    database = home / "cocoons.db"
    sqlite3.connect(database).close()
    with proxy.client() as client:
        client.add_source(str(database), name="cocoons")
        client.create_service("cocoons", "cocoon-c7", {
            "runner": {"type": "script", "script": {
                "run": f"exec {__import__('sys').executable} {Path(__file__).with_name('upstream_app.py')} {port} c7"}},
            "rollout": {"type": "recreate", "recreate": {"ports": {"http": port}}},
            "healthcheck": {"type": "tcp", "tcp": {"port": "{{runtime.port.http}}"}, "interval": "0.2s"},
        }, start=True)
    proxy.wait_serving("/cocoon/c7/", b"c7")
    assert proxy.get("/cocoon/c7/hello?q=1")[1] == f"c7 {port} GET /hello?q=1".encode()
    assert proxy.get("/cocoon/c7")[1].endswith(b" GET /")
    status, body = proxy.get("/cocoon/nope/x")
    assert status == 503 and b"cocoons:cocoon-nope is not known to hive" in body
