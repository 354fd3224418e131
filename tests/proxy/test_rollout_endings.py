"""How a blue-green rollout ends: the drain is over as soon as the old generation has no
request in flight through the proxy (not at the end of its grace period), and a failed
rollout with ``on_failure: abort`` stops both generations."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from hive_client import (
    BlockingClient,
    InstanceOutcome,
    RolloutCompleted,
    RolloutDrained,
    RolloutRolledBack,
    RolloutSwitched,
    ServiceFailed,
)
from tests.proxy.conftest import Proxy, write_yaml
from tests.proxy.test_blue_green import blue_green_yaml, started


def test_an_idle_blue_is_drained_at_once_not_after_its_grace_period(proxy: Proxy, tmp_path: Path) -> None:
    # A grace period of an hour: the restart answers (within the client's 30 s) only
    # if the drain ends when blue has nothing in flight.
    project = write_yaml(tmp_path / "p", blue_green_yaml(drain="1h", healthy="0s"))
    with started(proxy, project) as client:
        outcomes = client.restart_service("p:web")
        assert [o.result for o in outcomes] == ["done"], outcomes
        assert [(s.generation, s.state) for s in client.list_services("p")] == [(2, "running")]


def test_a_request_in_flight_on_blue_holds_the_drain_until_it_is_answered(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml(drain="1h", healthy="0s"))
    with started(proxy, project) as client:
        blue_port = client.get_service_status("p:web").ports["http"]
        # A response under way on blue: its head and a first piece came, the rest waits.
        slow = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        slow.request("GET", "/web/slow")
        response = slow.getresponse()
        assert (response.status, response.read(5)) == (200, b"first")
        answers: list[list[InstanceOutcome]] = []

        def restart_in_background() -> None:
            with proxy.client() as own:  # (a client serves one thread)
                answers.append(own.restart_service("p:web"))

        with BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_switched", "rollout_drained", "rollout_completed"],
                                         fqn="p:web") as events:
            restart = threading.Thread(target=restart_in_background, daemon=True)
            restart.start()
            stream = iter(events)
            assert isinstance(next(stream), RolloutSwitched)
            green_port = client.get_service_status("p:web").ports["http"]
            assert proxy.get("/web/")[1].startswith(f"web-{green_port} ".encode())  # new requests: green
            # Blue still drains: its request is in flight.
            states = {(s.generation, s.state) for s in client.list_services("p")}
            assert states == {(2, "running"), (1, "draining")}
            assert answers == []
            # Blue's response ends: the drain is over, blue stops, the restart answers.
            urllib.request.urlopen(f"http://127.0.0.1:{blue_port}/release", timeout=10).read()
            assert response.read() == b"-done"
            slow.close()
            drained = next(stream)
            assert isinstance(drained, RolloutDrained) and drained.generation == 1
            assert isinstance(next(stream), RolloutCompleted)
        restart.join(timeout=30)
        assert [o.result for o in answers[0]] == ["done"]


def test_on_failure_abort_stops_both_generations(proxy: Proxy, tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", blue_green_yaml(timeout="5s", on_failure="abort"))
    green_port = int((project / "hive.yaml").read_text().split("green: ")[2].split("}")[0])
    with started(proxy, project) as client, socket.socket() as taken:
        blue = client.get_service_status("p:web")
        taken.bind(("127.0.0.1", green_port))  # green cannot listen: it fails
        taken.listen()
        with BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_rolled_back"], fqn="p:web") as events:
            with pytest.raises(ServiceFailed) as failed:
                client.restart_service("p:web")
            rolled_back = next(iter(events))
        [outcome] = failed.value.outcomes
        assert outcome.result == "failed" and "on_failure: abort" in (outcome.reason or "")
        assert isinstance(rolled_back, RolloutRolledBack)
        assert (rolled_back.generation, rolled_back.serving) == (2, 0)  # nothing serves on
        after = client.get_service_status("p:web")
        assert (after.state, after.desired, after.generation) == ("stopped", "stopped", 1)
        assert [s.fqn for s in client.list_services("p")] == ["p:web"]
        assert blue.pid is not None and not _alive(blue.pid)
        status, body = proxy.get("/web/")
        assert status == 503 and b"wanted: stopped" in body


def _alive(pid: int) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
