#!/usr/bin/env python3
"""Supervision speed: Hive against raw floors measured in the same run.

    python bench/supervise.py [--sizes 100 500] [--crashes 40]

- cold start of N services until all are running, against ``os.posix_spawn`` of N
  ``sleep`` processes;
- the gap between a crash and the new start with zero configured delay (the child
  writes its own start and exit times);
- stop of 100 services, against SIGTERM to 100 processes and reaping them;
- the daemon's RSS idle and with 100 services.

Targets: cold start <= 2x raw spawn; crash-restart gap median <= 10 ms; stop of 100 <= 3x
raw; RSS with 100 services <= 32 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from hive_client import BlockingClient  # noqa: E402

SLEEP = shutil.which("sleep") or "/bin/sleep"


def raw_spawn(count: int) -> tuple[float, list[int]]:
    began = time.perf_counter()
    pids = [os.posix_spawn(SLEEP, [SLEEP, "1000"], os.environ) for _ in range(count)]
    return time.perf_counter() - began, pids


def raw_stop(pids: list[int]) -> float:
    began = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - began


def write_project(directory: Path, count: int, command: str = "sleep 1000") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ['version: "1"', "services:"]
    for index in range(count):
        lines += [f"  s{index}:", "    runner:", "      type: script", f"      script: {{run: \"{command}\"}}"]
    (directory / "hive.yaml").write_text("\n".join(lines) + "\n")


class Daemon:
    def __init__(self, home: Path, config: str = "") -> None:
        self.home = home
        self.env = dict(os.environ, HIVE_HOME=str(home), PYTHONPATH=str(ROOT))
        home.mkdir(parents=True, exist_ok=True)
        # The crash loops measured must run to the end: no start limit.
        (home / "config.toml").write_text("[restart]\nstart_limit_burst = 0\n" + config)
        subprocess.run([sys.executable, "-m", "hive", "start"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        self.socket = home / "hive.sock"
        with BlockingClient(self.socket) as client:
            self.pid = client.status().pid or 0

    def client(self) -> BlockingClient:
        client = BlockingClient(self.socket, timeout=600)
        client.connect()
        return client

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "hive", "stop", "--timeout", "300"], env=self.env,
                       stdout=subprocess.DEVNULL)


def cold_start(work: Path, count: int) -> tuple[float, float]:
    """(hive seconds, stop-of-all seconds) for a project of ``count`` services."""
    home = work / f"home{count}"
    write_project(work / f"proj{count}", count)
    daemon = Daemon(home)
    try:
        with daemon.client() as client:
            client.add_source(work / f"proj{count}", name="bench")
            began = time.perf_counter()
            client.start_source("bench")
            started = time.perf_counter() - began
            states = {s.state for s in client.list_services("bench")}
            assert states == {"running"}, states
            began = time.perf_counter()
            client.stop_source("bench")
            stopped = time.perf_counter() - began
    finally:
        daemon.stop()
    return started, stopped


def crash_gaps(work: Path, crashes: int) -> list[float]:
    daemon = Daemon(work / "home-crash")
    try:
        return crash_gaps_on(daemon, work / "proj-crash", crashes)
    finally:
        daemon.stop()


def crash_gaps_on(daemon: Daemon, project: Path, crashes: int, name: str = "bench") -> list[float]:
    """The gaps between a crash and the next start of a service that crashes ``crashes``
    times, run by ``daemon`` from ``project`` (created here)."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "hive.yaml").write_text(
        'version: "1"\n'
        "services:\n"
        "  crasher:\n"
        "    runner:\n"
        "      type: script\n"
        "      script:\n"
        "        run: |\n"
        "          date +%s%N >> starts\n"
        "          sleep 0.02\n"
        "          date +%s%N >> exits\n"
        "          exit 1\n"
        "    restart: {policy: on-failure, delay: 0s}\n"
    )
    with daemon.client() as client:
        client.add_source(project, name=name)
        client.start_source(name)
        with client.subscribe_events(["service_restarting"]) as events:
            for seen, _ in enumerate(events, start=1):
                if seen >= crashes + 1:
                    break
        client.stop_source(name)
    starts = [int(x) for x in (project / "starts").read_text().split()]
    exits = [int(x) for x in (project / "exits").read_text().split()]
    return [(start - end) / 1e9 for end, start in zip(exits, starts[1:], strict=False)]


def rss_figures(work: Path) -> tuple[int, int]:
    home = work / "home-rss"
    write_project(work / "proj-rss", 100)
    daemon = Daemon(home)
    try:
        idle = daemon.rss()
        with daemon.client() as client:
            client.add_source(work / "proj-rss", name="bench")
            client.start_source("bench")
            loaded = daemon.rss()
            client.stop_source("bench")
    finally:
        daemon.stop()
    return idle, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--crashes", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "hive"), str(ROOT / "hive_client"),
                    str(ROOT / "runners")], check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="hvs-", dir="/tmp"))
    ok = True
    try:
        print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}")
        print(f"{'scenario':<34}{'raw floor':>12}{'hive':>12}{'ratio':>9}   target")
        stop_ratio = None
        for size in args.sizes:
            # Each Hive run is paired with a raw run just before it; the ratio of each pair,
            # then the median of the ratios: drift on a shared machine hits both alike.
            start_pairs, stop_pairs = [], []
            for _ in range(args.repeat):
                spawn_time, pids = raw_spawn(size)
                raw_stopped = raw_stop(pids)
                started, stopped = cold_start(work, size)
                start_pairs.append((spawn_time, started))
                stop_pairs.append((raw_stopped, stopped))
                shutil.rmtree(work / f"home{size}", ignore_errors=True)
            raw = statistics.median(r for r, _ in start_pairs)
            hive = statistics.median(h for _, h in start_pairs)
            ratio = statistics.median(h / r for r, h in start_pairs)
            ok &= ratio <= 2.0
            print(f"{f'cold start of {size}':<34}{raw * 1e3:>10.1f}ms{hive * 1e3:>10.1f}ms{ratio:>8.2f}x   <= 2x")
            if size == 100 or stop_ratio is None:
                stop_ratio = (size, stop_pairs)
        size, stop_pairs = stop_ratio
        raw_s = statistics.median(r for r, _ in stop_pairs)
        hive_s = statistics.median(h for _, h in stop_pairs)
        ratio_s = statistics.median(h / r for r, h in stop_pairs)
        ok &= ratio_s <= 3.0
        print(f"{f'stop of {size}':<34}{raw_s * 1e3:>10.1f}ms{hive_s * 1e3:>10.1f}ms{ratio_s:>8.2f}x   <= 3x")

        gaps = crash_gaps(work, args.crashes)
        median_gap = statistics.median(gaps)
        ok &= median_gap <= 0.010
        spread = f"p10 {statistics.quantiles(gaps, n=10)[0] * 1e3:.1f} / p90 {statistics.quantiles(gaps, n=10)[-1] * 1e3:.1f} ms"
        print(f"{'crash -> restart gap (median)':<34}{'':>12}{median_gap * 1e3:>10.2f}ms{'':>9}   <= 10 ms  ({spread}, n={len(gaps)})")

        idle, loaded = rss_figures(work)
        ok &= loaded <= 32 * 1024 * 1024
        print(f"{'daemon RSS idle':<34}{'':>12}{idle / 2**20:>9.1f}MiB")
        print(f"{'daemon RSS with 100 services':<34}{'':>12}{loaded / 2**20:>9.1f}MiB{'':>9}   <= 32 MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
