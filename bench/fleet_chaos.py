"""Many hives in network namespaces, random link cuts and machine deaths.

    sudo .venv/bin/python bench/fleet_chaos.py [--hives 50] [--rounds 50] [--seed N]

A real 3-member etcd cluster on a bridge in the host's namespace; each hive a real daemon
in its own network namespace (tests/fleet/netns.py), lease TTL 3 s, room for two
instances; one fleet service with as many replicas as hives. Each round cuts a hive's link
(healed once it has stopped its instances, or once they run elsewhere) or kills its
machine (daemon and instances; it comes back once they run elsewhere); see
tests/fleet/chaos.py. After every round every wanted instance must run exactly once; the
ledger every instance writes must never show two copies of one instance at once.

Reported: the seed, per kind of round the time until every instance ran once again
(p50, max), against the floor measured in the same run: a bare lease's expiry after its
last renewal (what any failover waits for). Exit status 1 on an overlap.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fleet as fleet_bench  # noqa: E402  (bench/fleet.py: its lease floor)

from tests.fleet.chaos import ACTIONS, run_chaos  # noqa: E402
from tests.fleet.harness import EtcdCluster, Fleet  # noqa: E402
from tests.fleet.netns import Network, usable  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hives", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a random one, printed)")
    parser.add_argument("--ttl", type=int, default=3, help="the hives' lease TTL (s)")
    parser.add_argument("--request-timeout", type=float, default=0.5, help="the hives' etcd request timeout (s)")
    parser.add_argument("--stop-grace", default="1s", help="the instances' stop_grace (below TTL x 0.5)")
    parser.add_argument("--patience", type=float, default=120.0, help="s each condition may take")
    args = parser.parse_args()
    why = usable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    network = Network.create()
    fleet = Fleet.create()
    fleet.patience = args.patience
    cluster: EtcdCluster | None = None
    load = os.getloadavg()
    try:
        cluster = EtcdCluster.launch(3, host=network.host_address)
        fleet_bench.TTL = args.ttl  # the floor's lease lives as long as the hives'
        floor = fleet_bench.lease_floor(cluster, 6)
        result = run_chaos(fleet, cluster, network, hives=args.hives, rounds=args.rounds, seed=seed,
                           lease_ttl=args.ttl, request_timeout=args.request_timeout, stop_grace=args.stop_grace)
    finally:
        fleet.close()
        network.remove()
        if cluster is not None:
            cluster.remove()
    print(f"machine: {os.cpu_count()} cpus, load average {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; {args.hives} hives in network namespaces, lease TTL {args.ttl} s, "
          f"request timeout {args.request_timeout} s, stop_grace {args.stop_grace}")
    print(f"seed {seed}; rounds done {len(result.rounds)} of {args.rounds}")
    print(f"{'until every instance runs once (s)':40} {'p50':>6} {'max':>6} {'n':>4} {'ratio':>7}")
    floor_p50 = statistics.median(floor)
    print(f"  {'floor: bare lease expiry':38} {floor_p50:6.2f} {max(floor):6.2f} {len(floor):4}")
    for action in ACTIONS:
        times = [seconds for kind, _hive, seconds in result.rounds if kind == action]
        if times:
            p50 = statistics.median(times)
            print(f"  {action:38} {p50:6.2f} {max(times):6.2f} {len(times):4} {p50 / floor_p50:6.1f}x")
    print(f"overlapping copies in the ledger: {len(result.overlaps)}")
    for overlap in result.overlaps:
        print(f"  overlap: {overlap}")
    return 1 if result.overlaps or len(result.rounds) < args.rounds else 0


if __name__ == "__main__":
    sys.exit(main())
