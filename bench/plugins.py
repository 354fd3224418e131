#!/usr/bin/env python3
"""Misbehaving core plugins against the daemon's latency, measured in the same run.

    python bench/plugins.py [--requests 2000] [--repeat 5] [--skip spinner]

Two daemons: one without plugins (the floor), one with the test plugins that misbehave
(``flooder`` calling ``list_services`` from 32 tasks without pause, ``blocker`` never
returning from ``on_event``, ``raiser`` raising in it, ``spinner`` spinning the CPU in
``run()`` in its own process (its watchdog deadline set past the run)) and a ``recorder``. From a
separate client, the round trip of ``status``: p50 and p99 of each, and the ratio. Targets:
p50 within 1.5x of the floor (the flooder gets its share of the loop, no more), p99 under
50 ms (issue 21: a blocking and a spinning plugin do not stall the daemon). Then the gap
between a service's crash and its restart (no delay configured), in each daemon.

Needs the test plugins installed: ``pip install tests/third_party_plugin``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.supervise import Daemon, crash_gaps_on  # noqa: E402

MISBEHAVING = """
[plugins.recorder.settings]
path = "{home}/recorder.jsonl"
[plugins.raiser]
[plugins.blocker]
event_timeout = 0.5
[plugins.flooder]
scope = "read"
[plugins.spinner]
event_timeout = 60.0
"""


def latencies(daemon: Daemon, count: int) -> list[float]:
    took = []
    with daemon.client() as client:
        for _ in range(100):
            client.status()
        for _ in range(count):
            began = time.perf_counter()
            client.status()
            took.append(time.perf_counter() - began)
    return took


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--crashes", type=int, default=40, help="crashes of a service, in each daemon")
    parser.add_argument("--skip", action="append", default=[], metavar="PLUGIN",
                        help="leave this misbehaving plugin out (to see what each one costs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hvpl-", dir="/tmp"))
    try:
        plain_home, plugged_home = work / "plain", work / "plugged"
        plugged_home.mkdir(parents=True)
        plain_home.mkdir(parents=True)
        config = MISBEHAVING.format(home=plugged_home)
        for name in args.skip:
            config = config.replace(f"[plugins.{name}]", f"[plugins.{name}]\nenabled = false", 1)
        plain, plugged = Daemon(plain_home), Daemon(plugged_home, config)
        try:
            # The socket answers before the plugins are up: wait for the flooder to run.
            deadline = time.monotonic() + 60
            with plugged.client() as client:
                while (states := {p.name: str(p.state) for p in client.list_plugins()}).get("flooder") != "running":
                    assert time.monotonic() < deadline, states
                    time.sleep(0.05)  # wait-ok: setup, re-checked under a deadline
            ratios, floor_p50, hive_p50, floor_p99, hive_p99 = [], [], [], [], []
            for _ in range(args.repeat):
                base = latencies(plain, args.requests)
                loaded = latencies(plugged, args.requests)
                floor_p50.append(percentile(base, 0.5))
                hive_p50.append(percentile(loaded, 0.5))
                floor_p99.append(percentile(base, 0.99))
                hive_p99.append(percentile(loaded, 0.99))
                ratios.append(hive_p50[-1] / floor_p50[-1])
            # A service that crashes at once, restarted with no delay: the gap from its exit
            # to its next start, in each daemon, with the plugins still loaded.
            floor_gap = statistics.median(crash_gaps_on(plain, work / "crash-plain", args.crashes))
            hive_gap = statistics.median(crash_gaps_on(plugged, work / "crash-plugged", args.crashes))
            with plugged.client() as client:
                states = {p.name: str(p.state) for p in client.list_plugins()}
        finally:
            plain.stop()
            plugged.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(ratios)
    print(f"{'status round trip':<34}{'p50 us':>10}{'p99 us':>10}")
    print(f"{'  daemon without plugins':<34}{statistics.median(floor_p50) * 1e6:>10.1f}"
          f"{statistics.median(floor_p99) * 1e6:>10.1f}")
    loaded = ", ".join(n for n in ("flooder", "blocker", "raiser", "spinner") if n not in args.skip)
    print(f"{'  with ' + loaded:<34}{statistics.median(hive_p50) * 1e6:>10.1f}"
          f"{statistics.median(hive_p99) * 1e6:>10.1f}")
    p99 = statistics.median(hive_p99)
    print(f"  ratio p50: {ratio:.2f}x (target <= 1.5x), p99 {p99 * 1e3:.1f} ms (target < 50 ms), "
          f"p99 ratio {p99 / statistics.median(floor_p99):.2f}x; plugin states after: "
          + ", ".join(f"{name} {state}" for name, state in sorted(states.items())))
    print(f"{'crash -> restart gap (median)':<34}{'floor ms':>10}{'plugged':>10}")
    print(f"{'':<34}{floor_gap * 1e3:>10.2f}{hive_gap * 1e3:>10.2f}   ratio {hive_gap / floor_gap:.2f}x "
          f"(n={args.crashes} each)")
    return 0 if ratio <= 1.5 and p99 < 0.050 else 1


if __name__ == "__main__":
    raise SystemExit(main())
