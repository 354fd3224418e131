"""Placement while the fleet changes under the leader: hives simulated by the test (a
record bound to a lease it holds) beside a real daemon that leads, on real etcd."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.harness import assignments, etcd_call, simulated_hive
from tests.fleet.test_fleet import call
from tests.fleet.test_resilience import plugin_state
from tests.support import wait_for


def test_a_hive_gone_in_the_middle_of_a_round(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    endpoint = etcd.endpoints[0]
    leader = fleet.start_hive("leader", etcd.endpoints, capacity=0)  # places, runs nothing
    simulated_hive(endpoint, "sim-a", capacity=200)
    gone = simulated_hive(endpoint, "sim-b", capacity=200)
    wait_for(lambda: len(call(leader, "status")["hives"]) == 3, timeout=30, what="both simulated hives seen")

    call(leader, "apply", services=[fleet.service("many", 300)])
    # One round plans all 300 over both hives; end sim-b's lease while it writes them.
    wait_for(lambda: len(assignments(endpoint)) >= 10, timeout=30, what="the round under way")
    etcd_call(endpoint, "lease/revoke", {"ID": str(gone)})
    placed_then = len(assignments(endpoint))

    # The leader carries on: sim-a filled to its capacity, nothing left on sim-b.
    fleet.wait(lambda: Counter(assignments(endpoint).values()) == {"sim-a": 200}, "sim-a full, sim-b empty")
    assert placed_then < 300, "the lease ended after the round: the test proves nothing"
    assert plugin_state(leader) == "running"
    assert call(leader, "status")["problems"] == {}
