"""Blue-green rollouts of a script service behind the real proxy: zero failed requests
under continuous load, rollback of a green that never becomes healthy, and a WebSocket
that stays on blue until blue is drained."""

from __future__ import annotations

import contextlib
import http.client
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hive_client import (
    BlockingClient,
    HiveError,
    InstanceOutcome,
    RolloutCompleted,
    RolloutDrained,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSwitched,
    ServiceFailed,
    ServiceStateChanged,
)
from tests.proxy.conftest import APP, Proxy, free_port, write_yaml
from tests.support import start_daemon, wait_for


def blue_green_yaml(*, drain: str = "0.2s", healthy: str = "0.2s", timeout: str = "20s",
                    on_failure: str = "keep-old") -> str:
    """A service named after its port (``web-PORT``), so a response says which colour served it."""
    blue, green = free_port(), free_port()
    return f"""
  web:
    runner: {{type: script, script: {{run: "exec {sys.executable} {APP} {{{{runtime.port.http}}}} web-{{{{runtime.port.http}}}}"}}}}
    rollout: {{type: blue-green, blue-green: {{ports: {{http: {{blue: {blue}, green: {green}}}}}, drain: {drain}, healthy_duration: {healthy}, timeout: {timeout}, on_failure: {on_failure}}}}}
    healthcheck: {{type: http, http: {{port: "{{{{runtime.port.http}}}}", path: /health, interval: 0.1s, retries: 1}}}}
    proxy: {{path: /web, strip_prefix: true}}
"""


@contextmanager
def load(proxy: Proxy, *, retries: list[str] | None = None) -> Iterator[tuple[list[str], list[int]]]:
    """Requests sent continuously (a kept-alive connection, and a new connection per
    request) until the block ends: the failures, and how many were answered.

    With ``retries``, a request whose connection closed before any answer is sent once
    more on a new connection (as browsers and most HTTP clients do for a GET); the first
    error goes to ``retries``, and only a second one is a failure."""
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def once(connection: http.client.HTTPConnection) -> None:
        connection.request("GET", "/web/load")
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            failures.append(f"{answer.status}: {body[:200]!r}")
        served[0] += 1

    def run(keep_alive: bool) -> None:
        connection: http.client.HTTPConnection | None = None
        while not stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            try:
                once(connection)
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = None
                what = f"{'kept-alive' if keep_alive else 'new'} connection: {exc!r}"
                if retries is None or not isinstance(exc, _UNANSWERED):
                    failures.append(what)
                    continue
                retries.append(what)
                again = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
                try:
                    once(again)
                except (OSError, http.client.HTTPException) as second:
                    failures.append(f"{what}, then on a new connection: {second!r}")
                finally:
                    again.close()
            if not keep_alive and connection is not None:
                connection.close()
                connection = None

    threads = [threading.Thread(target=run, args=(keep,), daemon=True) for keep in (True, False)]
    for thread in threads:
        thread.start()
    try:
        yield failures, served
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


# A connection closed before any byte of the answer: the request may be sent again.
_UNANSWERED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def make_sick(project: Path) -> None:
    """The next generation answers 503 to its health check."""
    path = project / "hive.yaml"
    path.write_text(path.read_text().replace("web-{{runtime.port.http}}", "web-{{runtime.port.http}} sick"))


def started(proxy: Proxy, project: Path) -> BlockingClient:
    client = proxy.client()
    client.add_source(str(project))
    client.start_source("p")
    proxy.wait_serving("/web/", b"web-")
    return client


def test_twenty_rollouts_under_load_fail_no_request(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml())
    with started(proxy, project) as client, load(proxy) as (failures, served):
        first = client.get_service_status("p:web")
        assert (first.generation, first.color) == (1, "blue")
        pids = {first.pid}
        for number in range(2, 22):
            before = served[0]
            outcomes = client.restart_service("p:web")
            assert [o.result for o in outcomes] == ["done"], outcomes
            info = client.get_service_status("p:web")
            assert info.generation == number and info.color == ("blue" if number % 2 else "green")
            assert info.pid not in pids
            pids.add(info.pid)
            assert proxy.get("/web/")[1].startswith(f"web-{info.ports['http']} ".encode())
            assert served[0] > before  # requests flowed during each rollout
        states = {s.fqn: s.state for s in client.list_services("p")}
    assert failures == []
    assert states == {"p:web": "running"}  # one generation left


def test_a_green_that_never_becomes_healthy_is_rolled_back(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml(timeout="2s"))
    with started(proxy, project) as client, load(proxy) as (failures, served):
        blue = client.get_service_status("p:web")
        with BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_rolled_back"], fqn="p:web") as events:
            # A reload of a changed service rolls out too: this green answers 503 to /health.
            make_sick(project)
            client.reload_source("p")
            rolled_back = next(iter(events))
        assert isinstance(rolled_back, RolloutRolledBack)
        assert rolled_back.generation == 2 and rolled_back.serving == 1
        assert "not healthy within 2 s" in rolled_back.reason
        after = client.get_service_status("p:web")
        assert (after.pid, after.generation, after.state) == (blue.pid, 1, "running")
        assert proxy.get("/web/")[1].startswith(f"web-{blue.ports['http']} ".encode())
        assert [s.fqn for s in client.list_services("p")] == ["p:web"]  # the green is gone
    assert failures == []
    assert served[0] > 0


def test_a_websocket_stays_on_blue_until_blue_is_drained(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml(drain="5s"))
    with started(proxy, project) as client:
        blue_port = client.get_service_status("p:web").ports["http"]
        with connect(f"ws://127.0.0.1:{proxy.port}/web/ws", open_timeout=10) as ws, \
                BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_switched", "rollout_drained", "rollout_completed"],
                                         fqn="p:web") as events:
            ws.send("before")
            assert ws.recv(timeout=10) == f"web-{blue_port}: before"
            answers: list[list[InstanceOutcome]] = []

            def restart_in_background() -> None:
                with proxy.client() as own:  # (a client serves one thread)
                    answers.append(own.restart_service("p:web"))

            restart = threading.Thread(target=restart_in_background, daemon=True)
            restart.start()
            stream = iter(events)
            assert isinstance(next(stream), RolloutSwitched)
            # New requests go to green; the WebSocket is still blue's.
            green_port = client.get_service_status("p:web").ports["http"]
            assert green_port != blue_port
            assert proxy.get("/web/")[1].startswith(f"web-{green_port} ".encode())
            ws.send("during")
            assert ws.recv(timeout=10) == f"web-{blue_port}: during"
            drained = next(stream)
            assert isinstance(drained, RolloutDrained) and drained.generation == 1
            # Blue is stopped once drained: then, and only then, its WebSocket ends.
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            assert isinstance(next(stream), RolloutCompleted)
            restart.join(timeout=30)
            assert [o.result for o in answers[0]] == ["done"]


def test_a_failed_rollout_answers_why(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml(timeout="1s"))
    with started(proxy, project) as client:
        make_sick(project)
        client.reload_source("p")  # (rolled back: see above)
        with pytest.raises(ServiceFailed) as failed:
            client.restart_service("p:web")
        [outcome] = failed.value.outcomes
        assert outcome.result == "failed" and "rolled back (generation 1 serves on)" in (outcome.reason or "")
        assert client.get_service_status("p:web").state == "running"


def test_a_green_left_by_a_killed_daemon_is_stopped_by_the_next(proxy: Proxy, tmp_path: Path,
                                                                 hive_env: Path) -> None:
    """The daemon is killed (SIGKILL) while green starts: the next daemon adopts blue, finds
    the green process by Hive's environment marker and stops it, so the next rollout gets
    the green ports."""
    project = write_yaml(tmp_path / "p", blue_green_yaml(timeout="60s"))
    original = (project / "hive.yaml").read_text()
    with started(proxy, project) as client:
        blue = client.get_service_status("p:web")
        green_port = int(original.split("green: ")[2].split("}")[0])
        make_sick(project)  # this green never becomes healthy: the rollout waits
        with BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_started"], fqn="p:web") as events:
            threading.Thread(target=_reload_quietly, args=(proxy,), daemon=True).start()
            assert isinstance(next(iter(events)), RolloutStarted)
    green = wait_for(lambda: _listener(green_port), timeout=30, what="green to listen")
    assert green is not None
    proxy.daemon.kill9()
    (project / "hive.yaml").write_text(original)  # so the next daemon's blue is current
    proxy.daemon = start_daemon(hive_env)
    wait_for(lambda: not _alive(green), timeout=30, what=f"the stray green (pid {green.pid}) to be stopped")
    assert blue.pid is not None and _alive(blue.pid)
    with proxy.client() as client:
        adopted = client.get_service_status("p:web")
        assert (adopted.pid, adopted.state, adopted.color) == (blue.pid, "running", "blue")
        outcomes = client.restart_service("p:web")
        assert [o.result for o in outcomes] == ["done"], outcomes
        after = client.get_service_status("p:web")
        assert (after.color, after.ports["http"]) == ("green", green_port)
    assert proxy.get("/web/")[1].startswith(f"web-{green_port} ".encode())


def _reload_quietly(proxy: Proxy) -> None:
    """Reload the project (a rollout); the daemon is killed under it."""
    with contextlib.suppress(HiveError), proxy.client() as own:
        own.reload_source("p")


def _listener(port: int) -> psutil.Process | None:
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port \
                and connection.pid:
            return psutil.Process(connection.pid)
    return None


def _alive(process: psutil.Process | int) -> bool:
    try:
        found = psutil.Process(process) if isinstance(process, int) else process
        return found.is_running() and found.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_each_generations_state_events_say_which_generation(proxy: Proxy, tmp_path: Path) -> None:
    """Both generations share the fqn during a rollout: their events carry ``generation``."""
    project = write_yaml(tmp_path / "p", blue_green_yaml())
    with started(proxy, project) as client, BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
            watcher.subscribe_events(["service_state_changed", "service_started", "service_stopped",
                                      "rollout_completed"], fqn="p:web") as events:
        assert [o.result for o in client.restart_service("p:web")] == ["done"]
        seen: list[tuple[str, int | None, str]] = []
        for event in events:
            if isinstance(event, RolloutCompleted):
                break
            tag = str(event.__struct_config__.tag)
            state = event.state if isinstance(event, ServiceStateChanged) else tag
            seen.append((tag, getattr(event, "generation", None), state))
    assert ("service_started", 2, "service_started") in seen
    assert ("service_state_changed", 2, "running") in seen
    assert ("service_state_changed", 1, "draining") in seen
    assert ("service_state_changed", 1, "stopped") in seen
    assert ("service_stopped", 1, "service_stopped") in seen
    assert all(generation in (1, 2) for _, generation, _ in seen), seen
