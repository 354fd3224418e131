"""`hive fleet rebalance`: instances move to a hive that joined later, each stopped on its
old hive before it starts on the new one (the ledger shows it), with a higher fencing token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tests.fleet.cli_helpers import as_json, hive
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call, hives_of
from tests.support import wait_for


def test_rebalance_onto_a_new_hive(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    first = fleet.start_hive("h0", etcd.endpoints, capacity=4)
    fleet.start_hive("h1", etcd.endpoints, capacity=4)
    # job first (names sorted): job-0 on h0, job-1 on h1; then web 2 and 2.
    call(first, "apply", services=[fleet.service("web", 4), fleet.service("job", 2, spread=False)])
    fleet.wait(lambda: hives_of(fleet) == {"h0": 3, "h1": 3}, "6 instances on h0 and h1")
    fleet.start_hive("h2", etcd.endpoints, capacity=4)
    wait_for(lambda: len(call(first, "status")["hives"]) == 3, timeout=30, what="h2 seen by h0")
    before = {entry[1]: entry[4] for entry in fleet.entries() if entry[0] == "start"}

    result = as_json(first, "fleet", "rebalance")
    # web's spread first (2, 2, 0: one moves from h1), then the load (h0 still runs 3).
    assert result["moves"] == [{"instance": "web-3", "from": "h1", "to": "h2"},
                               {"instance": "web-2", "from": "h0", "to": "h2"}]
    fleet.wait(lambda: hives_of(fleet) == {"h0": 2, "h1": 2, "h2": 2}
               and all(len(copies) == 1 for copies in fleet.running().values()), "2 instances on each hive")
    running = fleet.running()
    assert running["web-3"][0][0] == "h2" and running["web-2"][0][0] == "h2"
    assert Counter(copies[0][0] for name, copies in running.items() if name.startswith("web-")) == {
        "h0": 1, "h1": 1, "h2": 2}
    for instance, source in (("web-3", "h1"), ("web-2", "h0")):
        stop = next(e[5] for e in fleet.entries() if e[0] == "stop" and e[1] == instance and e[2] == source)
        start = next(e for e in fleet.entries() if e[0] == "start" and e[1] == instance and e[2] == "h2")
        assert stop < start[5]  # stopped there before it started here
        assert start[4] > before[instance]  # a new assignment: a higher fencing token
    assert fleet.overlaps() == []
    status = call(first, "status")
    assert not any(placed["draining"] for placed in status["assignments"].values())

    again = hive(first, "fleet", "rebalance")
    assert again.returncode == 0 and "the fleet is balanced: nothing to move" in again.stdout


def test_rebalance_refuses_an_unknown_service(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints)
    result = hive(daemon, "fleet", "rebalance", "nope")
    assert result.returncode != 0
    assert "no fleet service 'nope'" in result.stderr and "Traceback" not in result.stderr
