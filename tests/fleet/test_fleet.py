"""The fleet plugin through real etcd members and real daemons (a HIVE_HOME each): placement
within capacity; a killed hive's instances placed elsewhere; a hive cut off from etcd
stopping its instances before anyone else starts them. Every instance writes a ledger
(start and stop, with pid, fencing token and time), and no two copies of an instance
may ever overlap in it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hive_client import BlockingClient
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.support import DaemonProcess, wait_for


def call(daemon: DaemonProcess, command: str, **args: Any) -> Any:
    with BlockingClient(daemon.socket, timeout=30) as client:
        return client.plugin_call("fleet", command, args)


def hives_of(fleet: Fleet) -> Counter[str]:
    return Counter(hive for copies in fleet.running().values() for hive, _pid in copies)


def test_placement_within_capacity_and_spread(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemons = [fleet.start_hive(f"h{n}", etcd.endpoints, capacity=2) for n in range(3)]
    wait_for(lambda: len(call(daemons[0], "status")["hives"]) == 3, timeout=30, what="3 hives registered")
    call(daemons[1], "apply", services=[fleet.service("web", 3), fleet.service("job", 4)])

    # 7 wanted, room for 6: every hive full, no instance twice, web spread over all three.
    fleet.wait(lambda: sum(hives_of(fleet).values()) == 6, "6 instances running")
    assert hives_of(fleet) == {"h0": 2, "h1": 2, "h2": 2}
    running = fleet.running()
    assert all(len(copies) == 1 for copies in running.values()), running
    assert {hive for hive, _ in (running[f"web-{n}"][0] for n in range(3))} == {"h0", "h1", "h2"}
    status = call(daemons[2], "status")
    assert len(status["assignments"]) == 6 and status["leader"] in ("h0", "h1", "h2")
    tokens = [entry[4] for entry in fleet.entries()]
    assert len(set(tokens)) == 6  # each instance runs with its own fencing token

    # Fewer replicas: the surplus stops; then the freed room takes the waiting job instance.
    call(daemons[0], "apply", services=[fleet.service("web", 1)])
    wait_for(lambda: set(fleet.running()) == {"web-0", "job-0", "job-1", "job-2", "job-3"},
             timeout=30, what="web down to 1 and job at 4")
    assert fleet.overlaps() == []
    # A renewal a second, and not one line of it in the daemon's log (httpx logs each request).
    assert "HTTP Request" not in daemons[0].stderr()


def test_killed_hive_instances_run_elsewhere(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemons = {f"h{n}": fleet.start_hive(f"h{n}", etcd.endpoints, capacity=3) for n in range(3)}
    wait_for(lambda: len(call(daemons["h0"], "status")["hives"]) == 3, timeout=30, what="3 hives registered")
    call(daemons["h0"], "apply", services=[fleet.service("web", 3)])
    fleet.wait(lambda: len(fleet.running()) == 3, "3 instances running")
    victim = fleet.running()["web-1"][0][0]
    survivor = next(h for h in daemons if h != victim)

    fleet.kill_hive(victim)
    wait_for(lambda: len(fleet.running()) == 3 and victim not in hives_of(fleet), timeout=30,
             what="the dead hive's instance running on another hive")
    assert victim not in call(daemons[survivor], "status")["hives"]
    assert all(len(copies) == 1 for copies in fleet.running().values())
    assert fleet.overlaps() == []


def test_cut_off_hive_fences_before_takeover(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(3)
    # h0 reaches etcd only through member 0; h1 and h2 through the others.
    isolated = fleet.start_hive("h0", etcd.endpoints[:1], capacity=3)
    others = [fleet.start_hive(f"h{n}", etcd.endpoints[1:], capacity=3, scheduler=(n == 1)) for n in (1, 2)]
    wait_for(lambda: len(call(others[0], "status")["hives"]) == 3, timeout=30, what="3 hives registered")
    call(others[0], "apply", services=[fleet.service("web", 6, spread=True)])
    fleet.wait(lambda: len(fleet.running()) == 6, "6 instances running")
    cut = {instance for instance, copies in fleet.running().items() if copies[0][0] == "h0"}
    assert cut  # spread put some on h0

    etcd.pause(0)  # h0's only member stops answering: h0 is cut off
    try:
        wait_for(lambda: not ({i for i, c in fleet.running().items() if c[0][0] == "h0"})
                 and len(fleet.running()) == 6, timeout=30, what="h0's instances moved to h1 and h2")
        assert fleet.overlaps() == []
        stops = {e[1]: e[5] for e in fleet.entries() if e[0] == "stop" and e[2] == "h0"}
        starts = {e[1]: e[5] for e in fleet.entries() if e[0] == "start" and e[2] != "h0" and e[1] in cut}
        assert all(stops[i] < starts[i] for i in cut), (stops, starts)
    finally:
        etcd.resume(0)

    # The heal: h0 comes back with a new lease, no instance runs twice.
    wait_for(lambda: not call(isolated, "status")["fenced"], timeout=30, what="h0 back in the fleet")
    wait_for(lambda: len(call(others[0], "status")["hives"]) == 3, timeout=30, what="h0 registered again")
    assert len(fleet.running()) == 6
    assert all(len(copies) == 1 for copies in fleet.running().values())
    assert fleet.overlaps() == []
