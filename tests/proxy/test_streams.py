"""WebSocket pass-through, and reloads that change routes under requests in flight."""

from __future__ import annotations

import http.client
import threading
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from tests.proxy.conftest import Proxy, free_port, service_yaml, write_yaml
from tests.support import wait_for


def test_websocket_upgrade_passes_through(proxy: Proxy, tmp_path: Path) -> None:
    write_yaml(tmp_path / "p", service_yaml("chat", free_port(), "{path: /chat, strip_prefix: true}"))
    with proxy.client() as client:
        client.add_source(str(tmp_path / "p"))
        client.start_source("p")
    proxy.wait_serving("/chat/", b"chat")
    with connect(f"ws://127.0.0.1:{proxy.port}/chat/ws", open_timeout=10) as ws:
        for text in ("hello", "x" * 5000, "third"):
            ws.send(text)
            assert ws.recv(timeout=10) == f"chat: {text}"
    # The connection is plain HTTP again for the next client.
    assert proxy.get("/chat/after")[1].endswith(b"GET /after")


def test_reload_changes_routes_without_dropping_requests_in_flight(proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    project = write_yaml(tmp_path / "p", service_yaml("web", port, "{path: /v1, strip_prefix: true}"))
    with proxy.client() as client:
        client.add_source(str(project))
        client.start_source("p")
        proxy.wait_serving("/v1/", b"web")
        pid = client.get_service_status("p:web").pid

        # A response under way: its head and first bytes are in, the rest waits.
        slow = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        slow.request("GET", "/v1/slow")
        response = slow.getresponse()
        assert response.status == 200 and response.read(5) == b"first"

        # And a steady stream of requests on kept-alive connections while reloads happen.
        failures: list[str] = []
        served = [0]
        stop = threading.Event()

        def load() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            while not stop.is_set():
                for path in ("/v1/a", "/v2/a") if served[0] % 2 else ("/v1/a",):
                    try:
                        connection.request("GET", path)
                        answer = connection.getresponse()
                        body = answer.read()
                    except (OSError, http.client.HTTPException) as exc:
                        failures.append(f"{path}: {exc!r}")
                        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
                        continue
                    if path == "/v1/a" and answer.status != 200:
                        failures.append(f"{path}: {answer.status} {body[:200]!r}")
                    served[0] += 1

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_for(lambda: served[0] >= 20, what="requests through the proxy")
            for routes in ("[{path: /v1, strip_prefix: true}, {path: /v2, strip_prefix: true}]",
                           "[{path: /v1, strip_prefix: true}, {path: /v2}]") * 3:
                write_yaml(project, service_yaml("web", port, routes))
                client.reload_source("p")
                before = served[0]
                wait_for(lambda before=before: served[0] >= before + 10, what="requests after the reload")
        finally:
            stop.set()
            loader.join(30)
        assert failures == [], failures
        status, body = proxy.get("/v2/x")
        assert (status, body.split()[-1]) == (200, b"/v2/x")  # the last reload's route: no strip

        # The service was not restarted for a route change, and the slow response completes.
        assert client.get_service_status("p:web").pid == pid
        urllib.request.urlopen(f"http://127.0.0.1:{port}/release", timeout=10).read()
        assert response.read() == b"-done"
        slow.close()
