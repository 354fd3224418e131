"""A daemon that restarts (SIGKILL, its instances left running) adopts its fleet instances
while its lease lives, and stops them before registering again once the lease is gone."""

from __future__ import annotations

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
