"""Random rounds of link cuts and machine deaths over hives in network namespaces, for
tests/fleet/test_chaos.py and bench/fleet_chaos.py.

Each round picks a hive and one of:

- **cut, healed early**: its link is cut; once its instances have stopped (its fence,
  before its lease can expire) the link is healed: a renewal lifts the fence and it runs
  them again, with the same tokens;
- **cut, healed late**: its link is cut until its lease has expired and its instances run
  elsewhere; then healed: it registers again with a new lease;
- **killed**: the machine dies (daemon and instances, SIGKILL); once its instances run
  elsewhere it comes back (a new daemon on the same home, in the same namespace).

After every round every wanted instance must run exactly once, and the ledger that every
instance writes must show no two copies of one instance alive at any moment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hive_client import BlockingClient, Unavailable
from tests.fleet.harness import EtcdCluster, Fleet
from tests.fleet.netns import Network

ACTIONS = ("cut, healed early", "cut, healed late", "killed")


@dataclass
class ChaosResult:
    seed: int
    hives: int
    replicas: int
    rounds: list[tuple[str, str, float]] = field(default_factory=list)  # (action, hive, seconds to restore)
    overlaps: list[str] = field(default_factory=list)


def _status(fleet: Fleet, hive_id: str) -> dict[str, object] | None:
    try:
        with BlockingClient(fleet.daemons[hive_id].socket, timeout=10) as client:
            status: dict[str, object] = client.plugin_call("fleet", "status")
            return status
    except Unavailable:
        return None


def run_chaos(fleet: Fleet, etcd: EtcdCluster, network: Network, *, hives: int, rounds: int, seed: int,
              lease_ttl: int = 3, request_timeout: float = 0.5, stop_grace: str = "1s",
              say: Callable[[str], None] = print) -> ChaosResult:
    """``lease_ttl`` and ``request_timeout``: the hives' settings (many daemons on a small
    machine answer slower than a few); ``stop_grace``: the instances' (below ``lease_ttl``
    x 0.5, the fence's margin)."""
    rng = random.Random(seed)
    say(f"chaos: seed {seed}, {hives} hives, {rounds} rounds, lease TTL {lease_ttl} s")
    replicas = hives
    names = [f"h{n}" for n in range(hives)]
    for n, hive_id in enumerate(names):
        # Three may lead placement (fewer campaigns for the leader key); room for two each.
        fleet.start_hive(hive_id, etcd.endpoints, argv_prefix=network.add(n), capacity=2, scheduler=n < 3,
                         lease_ttl=lease_ttl, request_timeout=request_timeout)
    observer = names[0]
    def all_registered() -> bool:
        status = _status(fleet, observer) or {}
        known = status.get("hives")
        return isinstance(known, dict) and len(known) == hives

    fleet.wait(all_registered, f"{hives} hives registered")
    with BlockingClient(fleet.daemons[observer].socket, timeout=30) as client:
        client.plugin_call("fleet", "apply", {"services": [fleet.service("web", replicas, stop_grace)]})
    wanted = {f"web-{index}" for index in range(replicas)}

    def restored() -> bool:
        running = fleet.running()
        return set(running) == wanted and all(len(copies) == 1 for copies in running.values())

    fleet.wait(restored, f"{replicas} instances running once each")
    result = ChaosResult(seed=seed, hives=hives, replicas=replicas)
    for number in range(rounds):
        victim = rng.randrange(hives)
        hive_id, action = names[victim], rng.choice(ACTIONS)
        began = time.monotonic()

        def elsewhere(hive_id: str = hive_id) -> bool:
            return restored() and stopped_here(hive_id)

        def stopped_here(hive_id: str = hive_id) -> bool:
            return all(hive != hive_id for copies in fleet.running().values() for hive, _ in copies)

        def back(hive_id: str = hive_id) -> bool:
            return (_status(fleet, hive_id) or {}).get("fenced") is False

        if action == "killed":
            home = fleet.daemons[hive_id].home
            fleet.kill_hive(hive_id)
            fleet.wait(elsewhere, f"round {number}: {hive_id}'s instances running elsewhere")
            fleet.restart_hive(hive_id, home)
        else:
            network.cut_link(victim)
            if action == "cut, healed early":
                fleet.wait(stopped_here, f"round {number}: {hive_id} stopping its instances")
            else:
                fleet.wait(elsewhere, f"round {number}: {hive_id}'s instances running elsewhere")
            network.heal(victim)
            fleet.wait(back, f"round {number}: {hive_id} back in the fleet")
        fleet.wait(restored, f"round {number}: every instance running once")
        result.rounds.append((action, hive_id, time.monotonic() - began))
        result.overlaps = fleet.overlaps()
        say(f"round {number}: {hive_id} {action}; restored after {time.monotonic() - began:.1f} s; "
            f"overlaps so far: {len(result.overlaps)}")
        if result.overlaps:
            break
    return result
