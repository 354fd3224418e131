"""Limits (body, headers, time), the 404, and the 502/503 page as text and JSON."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from tests.proxy.conftest import Proxy, free_port, service_yaml, write_yaml


def _started(proxy: Proxy, tmp_path: Path, services: str) -> None:
    write_yaml(tmp_path / "p", services)
    with proxy.client() as client:
        client.add_source(str(tmp_path / "p"))
        client.start_source("p")


def _raw(proxy: Proxy, data: bytes) -> bytes:
    """Send ``data``; everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_request_limits(proxy: Proxy, tmp_path: Path) -> None:
    _started(proxy, tmp_path, service_yaml("web", free_port(), "{path: /}"))
    proxy.wait_serving("/", b"web")

    status, _, body = proxy.request("POST", "/echo", body=b"x" * 100_000)
    assert (status, len(body)) == (200, 100_000)  # at the limit: through
    status, _, body = proxy.request("POST", "/echo", body=b"x" * 100_001)
    assert status == 413 and b"100001 bytes; the limit is 100000" in body
    # A chunked body has no length up front: it is cut when it passes the limit.
    piece = b"y" * 60_000
    chunked = b"%x\r\n%b\r\n" % (len(piece), piece)
    answer = _raw(proxy, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked * 2 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    answer = _raw(proxy, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(piece)

    answer = _raw(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"z" * 5000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    answer = _raw(proxy, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    # Headers that never finish: 408 after header_timeout (1 s here), then the close.
    answer = _raw(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ") and b"within 1 s" in answer


def test_no_route_is_404(proxy: Proxy, tmp_path: Path) -> None:
    _started(proxy, tmp_path, service_yaml("web", free_port(), "{path: /app}"))
    proxy.wait_serving("/app", b"web")
    status, body = proxy.get("/elsewhere", Host="site.test")
    assert status == 404 and body.startswith(b"404 Not Found: no route for site.test/elsewhere")


def test_503_page_shows_state_and_log_lines_as_text_or_json(proxy: Proxy, tmp_path: Path) -> None:
    _started(proxy, tmp_path, service_yaml("web", free_port(), "{path: /}"))
    proxy.wait_serving("/", b"web")
    with proxy.client() as client:
        client.stop_service("p:web")

    status, headers, body = proxy.request("GET", "/x")
    assert status == 503 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "service p:web has no instance up" in text
    assert "p:web (wanted: stopped)" in text and "  p:web  stopped" in text
    assert "last log lines:" in text and "p:web stdout: listening on" in text
    assert "hive logs p:web" in text  # what to do next

    status, headers, body = proxy.request("GET", "/x", headers={"Accept": "application/json"})
    assert status == 503 and headers["content-type"] == "application/json"
    page = json.loads(body)
    assert page["error"] == "service p:web has no instance up"
    assert page["service"]["instances"][0]["state"] == "stopped"
    assert any("listening on" in line for line in page["service"]["logs"])
    assert len(page["service"]["logs"]) <= 5  # error_log_lines


def test_502_when_no_instance_accepts_a_connection(proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    # Up (no health check) but listening on nothing: the connect is refused.
    services = f"""
  mute:
    runner: {{type: script, script: {{run: "echo starting; exec {sys.executable} -c 'import time; time.sleep(600)'"}}}}
    rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
    proxy: {{path: /}}
"""
    _started(proxy, tmp_path, services)
    status, _, body = proxy.request("GET", "/", headers={"Accept": "application/json"})
    assert status == 502
    page = json.loads(body)
    assert page["error"].startswith(f"no instance of p:mute accepted a connection (127.0.0.1:{port}: ")
    assert page["service"]["instances"][0]["state"] == "running"
    status, body = proxy.get("/")
    assert status == 502 and b"p:mute (wanted: running)" in body
