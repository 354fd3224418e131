"""The proxy's built-in plugins, rate-limit and cors, through the real proxy with real
HTTP clients: what a client sees, the global chain, a route's replace and skip."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.proxy.conftest import Proxy, free_port, service_yaml, write_yaml
from tests.support import wait_for

LIMITED = "proxy:\n  plugins:\n    - {type: rate-limit, rate-limit: {requests: 2, per: 60, burst: 2}}\n"
CORS = ("proxy:\n  plugins:\n    - {type: cors, cors: {origins: [\"https://app.test\"], methods: [GET, POST],"
        " headers: [X-Token], max_age: 300}}\n")


def _start(proxy: Proxy, project: Path) -> None:
    """Until every service is healthy and the proxy listens (asked of the daemon, not
    through the proxy: a request would spend a rate limit's tokens)."""
    with proxy.client() as client:
        client.add_source(str(project))
        client.start_source("p")
        wait_for(lambda: all(s.healthy for s in client.list_services("p")), timeout=30,
                 what="the services to be healthy")
        wait_for(lambda: client.status().proxy_addresses, timeout=30, what="the proxy to listen")


def test_rate_limit_answers_429_with_retry_after_past_the_burst(proxy: Proxy, tmp_path: Path) -> None:
    services = (service_yaml("api", free_port(), "{path: /api}")
                + service_yaml("probe", free_port(), "{path: /probe, plugins: [{type: rate-limit, skip: true}]}"))
    _start(proxy, write_yaml(tmp_path / "p", services, head=LIMITED))
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    answers = []
    for _ in range(3):  # one kept-alive connection
        connection.request("GET", "/api/x")
        response = connection.getresponse()
        answers.append((response.status, response.getheader("retry-after"), response.read()))
    connection.close()
    assert [status for status, _, _ in answers] == [200, 200, 429]
    _, retry_after, body = answers[2]
    assert retry_after is not None and 1 <= int(retry_after) <= 30  # a token comes every 30 s
    assert b"over the rate limit of 2 requests per 60 s" in body
    # The bucket is the client's address, not its connection; JSON by Accept.
    status, headers, body = proxy.request("GET", "/api/x", headers={"Accept": "application/json"})
    assert status == 429 and "retry-after" in headers
    assert json.loads(body)["status"] == 429
    # A route that skips the global entry is not limited.
    assert all(proxy.get("/probe/x")[0] == 200 for _ in range(5))


def test_a_route_replaces_the_global_rate_limit(proxy: Proxy, tmp_path: Path) -> None:
    services = (service_yaml("api", free_port(), "{path: /api, plugins: [{type: rate-limit, rate-limit: {requests: 5, per: 60}}]}")
                + service_yaml("probe", free_port(), "{path: /probe, plugins: [{type: rate-limit, skip: true}]}"))
    _start(proxy, write_yaml(tmp_path / "p", services, head=LIMITED))
    statuses = [proxy.get("/api/x")[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


@pytest.fixture(params=["embedded", "caddy"])
def cors_proxy(request: pytest.FixtureRequest) -> Proxy:
    """The embedded proxy, then caddy (``backend = "caddy"``): cors is applied by both."""
    found: Proxy = request.getfixturevalue("proxy" if request.param == "embedded" else "caddy_proxy")
    return found


def test_cors_answers_preflights_and_marks_responses_to_allowed_origins(cors_proxy: Proxy, tmp_path: Path) -> None:
    proxy = cors_proxy
    _start(proxy, write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api, strip_prefix: true}"), head=CORS))
    proxy.wait_serving("/api/x", b"api")
    preflight = {"Origin": "https://app.test", "Access-Control-Request-Method": "POST"}
    status, headers, body = proxy.request("OPTIONS", "/api/x", headers=preflight)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "https://app.test"
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert headers["access-control-allow-headers"] == "X-Token"
    assert headers["access-control-max-age"] == "300"
    assert "access-control-allow-credentials" not in headers
    # A preflight from an origin not allowed: 403, and no CORS headers.
    status, headers, _ = proxy.request("OPTIONS", "/api/x", headers={**preflight, "Origin": "https://evil.test"})
    assert status == 403 and "access-control-allow-origin" not in headers
    # A request from an allowed origin reaches the instance, and its answer gets the headers.
    status, headers, body = proxy.request("GET", "/api/x", headers={"Origin": "https://app.test"})
    assert status == 200 and body.startswith(b"api ")
    assert headers["access-control-allow-origin"] == "https://app.test"
    assert "origin" in headers["vary"].lower()
    # An instance's own CORS header is replaced, not doubled (a browser refuses two).
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request("GET", "/api/own-cors", headers={"Origin": "https://app.test"})
    response = connection.getresponse()
    assert response.read() == b"own"
    assert response.headers.get_all("access-control-allow-origin") == ["https://app.test"]
    assert sorted(response.headers.get_all("vary") or []) == ["Accept-Encoding", "Origin"]
    connection.close()
    # From another origin, or none: the instance's answer as it is.
    for origin in ({"Origin": "https://evil.test"}, {}):
        status, headers, body = proxy.request("GET", "/api/x", headers=origin)
        assert status == 200 and "access-control-allow-origin" not in headers


def test_cors_forwards_an_options_request_that_is_not_a_preflight(cors_proxy: Proxy, tmp_path: Path) -> None:
    """Only an OPTIONS with Access-Control-Request-Method is a preflight (Fetch standard);
    another OPTIONS is the app's to answer."""
    proxy = cors_proxy
    _start(proxy, write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"), head=CORS))
    proxy.wait_serving("/api/x", b"api")
    status, headers, body = proxy.request("OPTIONS", "/api/x", headers={"Origin": "https://app.test"})
    assert status == 200 and body.startswith(b"api ") and b"OPTIONS" in body
    assert headers["access-control-allow-origin"] == "https://app.test"


def test_cors_headers_reach_the_proxys_own_answers(proxy: Proxy, tmp_path: Path) -> None:
    """A browser reads a 429 or 503 of an allowed origin only with the CORS headers."""
    head = CORS + "    - {type: rate-limit, rate-limit: {requests: 1, per: 60}}\n"
    services = (service_yaml("api", free_port(), "{path: /api}")
                + service_yaml("probe", free_port(), "{path: /probe, plugins: [{type: rate-limit, skip: true}]}"))
    _start(proxy, write_yaml(tmp_path / "p", services, head=head))
    origin = {"Origin": "https://app.test"}
    assert proxy.request("GET", "/api/x", headers=origin)[0] == 200
    status, headers, _ = proxy.request("GET", "/api/x", headers=origin)
    assert status == 429 and headers["access-control-allow-origin"] == "https://app.test"
    with proxy.client() as client:
        client.stop_service("p:probe")
    status, headers, _ = proxy.request("GET", "/probe/x", headers=origin)
    assert status == 503 and headers["access-control-allow-origin"] == "https://app.test"


def test_a_rate_limit_keeps_its_count_when_the_route_table_is_rebuilt(proxy: Proxy, tmp_path: Path) -> None:
    """Any source event rebuilds the table; a client over its limit stays over it."""
    _start(proxy, write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"), head=LIMITED))
    assert [proxy.get("/api/x")[0] for _ in range(3)] == [200, 200, 429]
    with proxy.client() as client:  # another project: its route in the table means a rebuild
        client.add_source(str(write_yaml(tmp_path / "q", service_yaml("other", free_port(), "{path: /other}"))))
        client.start_source("q")
    proxy.wait_serving("/other/x", b"other")
    assert proxy.get("/api/x")[0] == 429
