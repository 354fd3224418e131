"""Leaders die: the etcd cluster's raft leader (SIGKILL, a real 3-member cluster) and the
hive that leads placement (daemon and instances, SIGKILL). The fleet converges: every
wanted instance runs exactly once, none was ever placed twice (the ledger every instance
writes shows no two copies at any moment), and placement carries on."""

from __future__ import annotations

from collections.abc import Callable

from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call, hives_of
from tests.support import wait_for


def converged(fleet: Fleet, wanted: set[str]) -> bool:
    running = fleet.running()
    return set(running) == wanted and all(len(copies) == 1 for copies in running.values())


def test_etcd_leader_killed_placements_carry_on(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(3)
    leader = etcd.leader()
    # Every hive talks to the raft leader first: its death moves every client and elects.
    endpoints = [etcd.endpoints[leader]] + [e for n, e in enumerate(etcd.endpoints) if n != leader]
    daemons = [fleet.start_hive(f"h{n}", endpoints, capacity=3, lease_ttl=6, fence_after=0.7) for n in range(3)]
    call(daemons[0], "apply", services=[fleet.service("web", 3)])
    fleet.wait(lambda: converged(fleet, {f"web-{n}" for n in range(3)}), "web on the fleet")
    tokens_before = max(entry[4] for entry in fleet.entries())

    etcd.kill(leader)
    # A write during the election waits for it (the client moves to a live member).
    call(daemons[1], "apply", services=[fleet.service("job", 3)])
    wanted = {f"web-{n}" for n in range(3)} | {f"job-{n}" for n in range(3)}
    fleet.wait(lambda: converged(fleet, wanted), "web and job on the fleet after the election")
    assert etcd.leader() != leader
    assert fleet.overlaps() == []
    # The new placements' fencing tokens are above every earlier one.
    job_tokens = [entry[4] for entry in fleet.entries() if entry[1].startswith("job-")]
    assert min(job_tokens) > tokens_before
    status = call(daemons[2], "status")
    assert len(status["assignments"]) == 6 and status["leader"] in ("h0", "h1", "h2")


def test_scheduling_leader_killed_another_hive_takes_over(etcd_cluster: Callable[[int], EtcdCluster],
                                                          fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemons = {f"h{n}": fleet.start_hive(f"h{n}", etcd.endpoints, capacity=3) for n in range(3)}
    any_daemon = daemons["h0"]
    call(any_daemon, "apply", services=[fleet.service("web", 3)])
    fleet.wait(lambda: converged(fleet, {f"web-{n}" for n in range(3)}), "web on the fleet")
    leader = call(any_daemon, "status")["leader"]
    survivors = [hive for hive in daemons if hive != leader]

    fleet.kill_hive(leader)  # the machine that leads placement dies, its instance with it
    # Wanted while no hive leads: placed once another wins the leader key.
    call(daemons[survivors[0]], "apply", services=[fleet.service("job", 2)])
    wanted = {f"web-{n}" for n in range(3)} | {f"job-{n}" for n in range(2)}
    fleet.wait(lambda: converged(fleet, wanted) and leader not in hives_of(fleet),
               "web and job on the surviving hives")
    wait_for(lambda: call(daemons[survivors[1]], "status")["leader"] in survivors, timeout=30,
             what="a surviving hive leads")
    assert fleet.overlaps() == []
    assert sorted(hives_of(fleet).values()) == [2, 3]  # within capacity, on the two survivors
