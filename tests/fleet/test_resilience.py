"""The fleet's background loops ride out etcd and daemon errors: each logs once per
episode, retries with backoff, and the plugin keeps running (real etcd, real daemons)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hive_client import BlockingClient
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call
from tests.support import DaemonProcess


def plugin_state(daemon: DaemonProcess) -> str:
    with BlockingClient(daemon.socket, timeout=30) as client:
        return next(str(p.state) for p in client.list_plugins() if p.name == "fleet")


def problems(daemon: DaemonProcess) -> dict[str, Any]:
    found: dict[str, Any] = call(daemon, "status")["problems"]
    return found


def test_etcd_outage_shorter_than_the_fence_stops_nothing(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    # Renewals every 2 s, fence after 4.2 s without one; a request times out after 0.5 s.
    daemon = fleet.start_hive("h0", etcd.endpoints, lease_ttl=6, fence_after=0.7, request_timeout=0.5)
    call(daemon, "apply", services=[fleet.service("web", 2)])
    fleet.wait(lambda: len(fleet.running()) == 2, "2 instances running")
    before = fleet.running()

    etcd.pause(0)  # etcd stops answering
    try:
        # A renewal has timed out (> request_timeout): the outage is seen. At most
        # interval + request_timeout = 2.5 s after the last renewal, before the fence (4.2 s).
        fleet.wait(lambda: "lease renewal" in problems(daemon), "the failed renewal reported")
    finally:
        etcd.resume(0)
    fleet.wait(lambda: not problems(daemon), "every loop working again")

    status = call(daemon, "status")
    assert status["fences"] == 0 and not status["fenced"], daemon.stderr()
    assert fleet.running() == before  # the same processes: nothing stopped, nothing started
    assert [e for e in fleet.entries() if e[0] == "stop"] == []
    assert plugin_state(daemon) == "running"
    log = daemon.stderr()
    assert log.count("lease renewal failing") == 1, log  # once for the episode, however many retries
    assert "lease renewal works again" in log

    # And it still places: the loops did not end.
    call(daemon, "apply", services=[fleet.service("web", 3)])
    fleet.wait(lambda: len(fleet.running()) == 3, "a third instance placed after the outage")
    assert fleet.overlaps() == []


def test_daemon_errors_do_not_end_the_loops(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints)
    # The daemon refuses this service (its script runner has nothing to run): every start fails.
    broken = {"name": "broken", "replicas": 1, "config": {"runner": {"type": "script", "script": {}}}}
    call(daemon, "apply", services=[broken, fleet.service("web", 1)])

    fleet.wait(lambda: problems(daemon).get("instances", {}).get("failures", 0) >= 3,
               "the refused start retried three times")
    assert "broken-0" in problems(daemon)["instances"]["error"]
    fleet.wait(lambda: set(fleet.running()) == {"web-0"}, "the other instance running all the same")
    assert plugin_state(daemon) == "running"
    log = daemon.stderr()
    assert log.count("instances failing") == 1, log

    # Fixed: the loop that kept trying starts it, and the episode ends.
    call(daemon, "apply", services=[fleet.service("broken", 1)])
    fleet.wait(lambda: set(fleet.running()) == {"web-0", "broken-0"}, "the fixed service running")
    fleet.wait(lambda: not problems(daemon), "the episode over")
    assert "instances works again" in daemon.stderr()
