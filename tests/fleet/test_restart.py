"""A daemon that restarts (SIGKILL, its instances left running) adopts its fleet instances
while its lease lives, and stops them before registering again once the lease is gone. A
machine that dies (daemon and instances) and comes back starts none of them: the daemon
leaves the fleet source to the plugin, and the plugin finds the instance placed elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call
from tests.support import wait_for


def test_restart_within_the_lease_keeps_instances(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints, lease_ttl=10)
    call(daemon, "apply", services=[fleet.service("web", 2)])
    wait_for(lambda: len(fleet.running()) == 2, timeout=30, what="2 instances running")
    before = fleet.running()
    lease = call(daemon, "status")["lease"]

    daemon.kill9()  # the instances live on, the lease too (10 s)
    again = fleet.restart_hive("h0", daemon.home)
    wait_for(lambda: call(again, "status")["running_here"], timeout=30, what="the instances adopted")
    assert call(again, "status")["lease"] == lease
    assert fleet.running() == before, again.stderr()  # the same processes: nothing stopped, nothing started
    assert fleet.overlaps() == []


def test_restart_after_the_lease_stops_them_first(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints, lease_ttl=2, fence_after=0.5)
    call(daemon, "apply", services=[fleet.service("web", 1)])
    wait_for(lambda: len(fleet.running()) == 1, timeout=30, what="1 instance running")
    [(_, old_pid)] = fleet.running()["web-0"]
    old_lease = call(daemon, "status")["lease"]

    daemon.kill9()
    observer = fleet.start_hive("obs", etcd.endpoints, capacity=0, scheduler=False)
    wait_for(lambda: "h0" not in call(observer, "status")["hives"], timeout=30, what="h0's lease to expire")
    again = fleet.restart_hive("h0", daemon.home)
    wait_for(lambda: len(fleet.running().get("web-0", [])) == 1 and fleet.running()["web-0"][0][1] != old_pid,
             timeout=30, what="web-0 started anew")
    assert call(again, "status")["lease"] != old_lease
    stopped = [e for e in fleet.entries() if e[0] == "stop" and e[3] == old_pid]
    started = [e for e in fleet.entries() if e[0] == "start" and e[3] != old_pid]
    assert stopped and started and stopped[0][5] < started[-1][5]  # the old copy stopped before the new one
    assert started[-1][4] > stopped[0][4]  # and the new copy has a higher fencing token


def test_a_machine_back_from_the_dead_starts_nothing_placed_elsewhere(
        etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    for hive_id in ("h0", "h1"):
        fleet.start_hive(hive_id, etcd.endpoints, lease_ttl=2, fence_after=0.5)
    call(fleet.daemons["h0"], "apply", services=[fleet.service("web", 1)])
    fleet.wait(lambda: len(fleet.running().get("web-0", [])) == 1, "web-0 running")
    [(victim, _pid)] = fleet.running()["web-0"]
    survivor = "h1" if victim == "h0" else "h0"
    home = fleet.daemons[victim].home

    fleet.kill_hive(victim)  # the machine dies: its daemon and its instance
    fleet.wait(lambda: [hive for hive, _ in fleet.running().get("web-0", [])] == [survivor],
               "web-0 placed again on the survivor")
    [elsewhere] = fleet.running()["web-0"]
    back = time.time_ns()
    again = fleet.restart_hive(victim, home)  # the machine is back: the plugin has decided once registered
    fleet.wait(lambda: not call(again, "status")["fenced"], f"{victim} unfenced")

    # Nothing of the fleet started there: no copy beside the one placed elsewhere, not even for a moment.
    assert [e for e in fleet.entries() if e[2] == victim and e[5] > back] == [], again.stderr()
    assert fleet.overlaps() == []
    assert fleet.running()["web-0"] == [elsewhere]
    assert call(again, "status")["running_here"] == {}
