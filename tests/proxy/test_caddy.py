"""The Caddy backend (``[proxy] backend = "caddy"``): a real caddy, started by the daemon,
serves the routes; blue-green switches through it with no failed request and drains blue;
a route change on reload reaches it."""

from __future__ import annotations

import http.client
import json
import sqlite3
import sys
import threading
import urllib.request
from pathlib import Path

import psutil

from hive_client import (
    BlockingClient,
    InstanceOutcome,
    RolloutDrained,
    RolloutRolledBack,
    RolloutSwitched,
    ServiceFailed,
)
from tests.proxy.conftest import APP, Proxy, free_port, serve_four_routes, service_yaml, write_yaml
from tests.proxy.test_blue_green import blue_green_yaml, load, started
from tests.support import run_cli, start_daemon, wait_for


def _caddy_processes(proxy: Proxy) -> list[psutil.Process]:
    daemon = psutil.Process(proxy.daemon.pid)
    return [p for p in daemon.children() if p.name() == "caddy"]


def _again(proxy: Proxy, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """``GET path``, sent again when caddy, loading a new config, closed the connection
    (docs/proxy.md: clients do that for idempotent requests). The 503 page holds the
    service's state and last log lines, so a service that stops changes it more than once."""
    for _ in range(4):
        try:
            return proxy.request("GET", path, headers=headers)
        except (ConnectionResetError, http.client.RemoteDisconnected):
            continue
    return proxy.request("GET", path, headers=headers)


def _status(proxy: Proxy, path: str) -> int | None:
    """The status of ``path``; None when caddy, loading a new config, closed the connection."""
    try:
        return proxy.get(path)[0]
    except (ConnectionResetError, http.client.RemoteDisconnected):
        return None


def test_caddy_serves_host_and_path_routes_and_the_503_page(caddy_proxy: Proxy, tmp_path: Path) -> None:
    proxy = caddy_proxy
    serve_four_routes(proxy, tmp_path / "p", "{path: /fallback, strip_prefix: true}", "/fallback")
    with proxy.client() as client:
        assert [p.name() for p in _caddy_processes(proxy)] == ["caddy"]
        assert client.status().proxy_addresses == [f"127.0.0.1:{proxy.port}"]

        assert proxy.get("/api/users?id=1")[1].endswith(b" /users?id=1")  # the prefix stripped
        assert proxy.get("/api")[1].endswith(b" /")
        assert proxy.get("/api/admin/keys")[1].startswith(b"admin ")  # the longest prefix wins
        assert proxy.get("/api/x", Host="site.test:8080")[1].startswith(b"site ")  # host routes first
        status, body = proxy.get("/apix")  # a prefix ends at a segment
        assert status == 404 and b"no route" in body

        status, _, body = proxy.request("GET", "/fallback/headers", headers={"X-Forwarded-For": "10.0.0.9"})
        seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
        assert status == 200 and seen["x-forwarded-for"].endswith("127.0.0.1")
        assert seen["x-forwarded-proto"] == "http"

        client.stop_service("p:api")
        wait_for(lambda: _status(proxy, "/api/x") == 503, timeout=30, what="/api to answer 503")
        status, headers, body = _again(proxy, "/api/x", Accept="application/json")
        page = json.loads(body)
        assert status == 503 and headers["content-type"].startswith("application/json")
        assert page["service"]["fqn"] == "p:api" and page["service"]["desired"] == "stopped"
        assert b"p:api has no instance up" in _again(proxy, "/api/x")[2]  # text by default


def test_blue_green_through_caddy_fails_no_request(caddy_proxy: Proxy, tmp_path: Path) -> None:
    proxy = caddy_proxy
    project = write_yaml(tmp_path / "p", blue_green_yaml())
    # Each config load closes caddy's idle kept-alive connections (docs/proxy.md): a
    # request sent on one at that moment is unanswered, and a client sends it again.
    retries: list[str] = []
    with started(proxy, project) as client, load(proxy, retries=retries) as (failures, served):
        for number in range(2, 8):
            before = served[0]
            outcomes = client.restart_service("p:web")
            assert [o.result for o in outcomes] == ["done"], outcomes
            info = client.get_service_status("p:web")
            assert info.generation == number
            assert _again(proxy, "/web/")[2].startswith(f"web-{info.ports['http']} ".encode())
            wait_for(lambda before=before: served[0] > before, timeout=30, what="requests to flow")  # type: ignore[misc]
    assert failures == [], failures


def test_caddy_drains_blue_until_its_request_is_answered(caddy_proxy: Proxy, tmp_path: Path) -> None:
    """A slow request to blue is under way at the switch: blue is stopped only once it is
    answered (drain 30 s: stopping blue sooner would cut the response)."""
    proxy = caddy_proxy
    project = write_yaml(tmp_path / "p", blue_green_yaml(drain="30s"))
    with started(proxy, project) as client:
        blue_port = client.get_service_status("p:web").ports["http"]
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        connection.request("GET", "/web/slow")
        slow = connection.getresponse()  # the head and a first piece: blue holds the rest
        assert slow.status == 200
        answers: list[list[InstanceOutcome]] = []

        def restart_in_background() -> None:
            with proxy.client() as own:
                answers.append(own.restart_service("p:web"))

        with BlockingClient(proxy.daemon.socket, timeout=60) as watcher, \
                watcher.subscribe_events(["rollout_switched", "rollout_drained"], fqn="p:web") as events:
            restart = threading.Thread(target=restart_in_background, daemon=True)
            restart.start()
            stream = iter(events)
            assert isinstance(next(stream), RolloutSwitched)
            green_port = client.get_service_status("p:web").ports["http"]
            assert _again(proxy, "/web/")[2].startswith(f"web-{green_port} ".encode())
            assert answers == []  # blue is draining: its request is under way
            urllib.request.urlopen(f"http://127.0.0.1:{blue_port}/release", timeout=10).read()
            assert slow.read() == b"first-done"  # whole: blue was not stopped under it
            drained = next(stream)
            assert isinstance(drained, RolloutDrained) and drained.generation == 1
        restart.join(timeout=60)
        assert [o.result for o in answers[0]] == ["done"]
        connection.close()


def test_a_route_change_on_reload_reaches_caddy(caddy_proxy: Proxy, tmp_path: Path) -> None:
    proxy = caddy_proxy
    project = write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /old}"))
    with proxy.client() as client:
        client.add_source(str(project))
        client.start_source("p")
        proxy.wait_serving("/old/x", b"api")
        pid = client.get_service_status("p:api").pid
        path = project / "hive.yaml"
        path.write_text(path.read_text().replace("{path: /old}", "{path: /new}"))
        client.reload_source("p")
        proxy.wait_serving("/new/x", b"api")
        assert _again(proxy, "/old/x")[0] == 404
        assert client.get_service_status("p:api").pid == pid  # a route change restarts nothing


def test_a_caddy_that_exits_is_started_again_with_the_routes(caddy_proxy: Proxy, tmp_path: Path) -> None:
    proxy = caddy_proxy
    write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"))
    with proxy.client() as client:
        client.add_source(str(tmp_path / "p"))
        client.start_source("p")
    proxy.wait_serving("/api/x", b"api")
    [first] = _caddy_processes(proxy)
    first.kill()
    first.wait(30)
    wait_for(lambda: [p for p in _caddy_processes(proxy) if p.pid != first.pid], timeout=30,
             what="a new caddy")
    proxy.wait_serving("/api/x", b"api")


def test_the_caddy_of_a_killed_daemon_is_stopped_by_the_next(caddy_proxy: Proxy, tmp_path: Path,
                                                              hive_env: Path) -> None:
    proxy = caddy_proxy
    write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"))
    with proxy.client() as client:
        client.add_source(str(tmp_path / "p"))
        client.start_source("p")
    proxy.wait_serving("/api/x", b"api")
    [first] = _caddy_processes(proxy)
    proxy.daemon.kill9()
    assert first.is_running()  # it holds the port and the admin socket
    proxy.daemon = start_daemon(hive_env)
    wait_for(lambda: not first.is_running() or first.status() == psutil.STATUS_ZOMBIE, timeout=30,
             what=f"the old caddy (pid {first.pid}) to stop")
    proxy.wait_serving("/api/x", b"api")  # the next daemon's caddy serves
    assert len(_caddy_processes(proxy)) == 1


def test_a_green_that_turns_unhealthy_after_the_switch_gives_caddy_back_to_blue(
        caddy_proxy: Proxy, tmp_path: Path) -> None:
    proxy = caddy_proxy
    project = write_yaml(tmp_path / "p", blue_green_yaml(healthy="30s", drain="0.2s"))
    retries: list[str] = []
    with started(proxy, project) as client, load(proxy, retries=retries) as (failures, _served), \
            BlockingClient(proxy.daemon.socket, timeout=60) as watcher, \
            watcher.subscribe_events(["rollout_switched", "rollout_rolled_back"], fqn="p:web") as events:
        blue_port = client.get_service_status("p:web").ports["http"]
        answers: list[str] = []

        def restart_in_background() -> None:
            with proxy.client() as own:
                try:
                    own.restart_service("p:web")
                    answers.append("done")
                except ServiceFailed as exc:
                    answers.append(str(exc))

        restart = threading.Thread(target=restart_in_background, daemon=True)
        restart.start()
        stream = iter(events)
        assert isinstance(next(stream), RolloutSwitched)
        green_port = client.get_service_status("p:web").ports["http"]
        assert _again(proxy, "/web/")[2].startswith(f"web-{green_port} ".encode())  # caddy has the switch
        urllib.request.urlopen(f"http://127.0.0.1:{green_port}/sick", timeout=10).read()
        rolled_back = next(stream)
        assert isinstance(rolled_back, RolloutRolledBack) and rolled_back.serving == 1
        assert _again(proxy, "/web/")[2].startswith(f"web-{blue_port} ".encode())  # and the way back
        restart.join(timeout=60)
        assert answers and answers[0] != "done"
    assert failures == [], failures


def test_a_missing_caddy_is_a_clear_error_and_the_daemon_serves_on(hive_env: Path, tmp_path: Path) -> None:
    (hive_env / "config.toml").write_text(
        f'[proxy]\nbackend = "caddy"\ncaddy_command = "{tmp_path}/no-caddy"\nlisten = ["127.0.0.1:{free_port()}"]\n')
    daemon = start_daemon(hive_env)
    try:
        write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"))
        with BlockingClient(daemon.socket, timeout=30) as client:
            client.add_source(str(tmp_path / "p"))
            client.start_source("p")
            wait_for(lambda: f"cannot start caddy: no '{tmp_path}/no-caddy' on PATH" in daemon.stderr_path.read_text(),
                     timeout=30, what="the daemon to say why")
            status = client.status()
            assert status.proxy_addresses == []
            assert [e.startswith(f"cannot start caddy: no '{tmp_path}/no-caddy' on PATH") for e in status.proxy_errors] \
                == [True]
            assert f"NOT LISTENING: cannot start caddy: no '{tmp_path}/no-caddy'" in run_cli("status").stdout
            wait_for(lambda: client.get_service_status("p:api").state == "running", timeout=30,
                     what="the service to run")
    finally:
        daemon.stop()


def test_caddy_routes_cocoons(caddy_proxy: Proxy, home: Path) -> None:
    port = free_port()
    database = home / "cocoons.db"
    sqlite3.connect(database).close()
    with caddy_proxy.client() as client:
        client.add_source(str(database), name="cocoons")
        client.create_service("cocoons", "cocoon-c7", {
            "runner": {"type": "script", "script": {"run": f"exec {sys.executable} {APP} {port} c7"}},
            "rollout": {"type": "recreate", "recreate": {"ports": {"http": port}}},
            "healthcheck": {"type": "tcp", "tcp": {"port": "{{runtime.port.http}}"}, "interval": "0.2s"},
        }, start=True)
    caddy_proxy.wait_serving("/cocoon/c7/", b"c7")
    assert caddy_proxy.get("/cocoon/c7/hello?q=1")[1] == f"c7 {port} GET /hello?q=1".encode()
    assert caddy_proxy.get("/cocoon/c7")[1].endswith(b" GET /")
    status, body = caddy_proxy.get("/cocoon/nope/x")
    assert status == 503 and b"no such cocoon" in body
