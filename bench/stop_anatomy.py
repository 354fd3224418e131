#!/usr/bin/env python3
"""Where a stop of N services goes: Hive against two floors, in one run.

    python bench/stop_anatomy.py [--count 100] [--rounds 15]

- **raw floor**: SIGTERM to N ``sleep`` processes (each in a session of its own, as
  Hive's are), then ``waitpid`` each, in a blocking loop;
- **minimal asyncio supervisor**: what any event-loop supervisor must do at the least: a
  task per child awaiting its pidfd in the loop, ``killpg`` each, then ``waitid`` and
  ``close`` as each exit is reported; nothing else (no log, event, state or record);
- **Hive**: ``stop_source`` of N running services, until it answers (every instance
  reaped, its output drained, its state saved), and the daemon's CPU time for it (all
  its threads, from ``/proc/PID/task/*/schedstat``).

Rounds interleave the three (the machine is shared and drifts); each figure is a median,
and each ratio the median of the per-round ratios to the raw floor. The gap between the
minimal supervisor and Hive is what Hive does per exit besides reaping; the gap between
the raw floor and the minimal supervisor is the event loop's share.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from supervise import SLEEP, Daemon, raw_stop, write_project

SETTLE = 0.3  # let the children reach their sleep before the stop: a stop of running programs


def spawn(count: int) -> list[int]:
    return [os.posix_spawn(SLEEP, [SLEEP, "1000"], os.environ, setsid=True) for _ in range(count)]


def raw_floor(count: int) -> float:
    pids = spawn(count)
    time.sleep(SETTLE)  # wait-ok: not a wait for a condition; see SETTLE
    return raw_stop(pids)


def _reap(pidfd: int) -> None:
    """Collect an exited child (never blocks: its pidfd said it exited)."""
    os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    os.close(pidfd)


async def _minimal(count: int) -> float:
    loop = asyncio.get_running_loop()
    pids = spawn(count)

    async def watch(pid: int) -> None:
        fd = os.pidfd_open(pid)
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, exited.set_result, None)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
        _reap(fd)

    watchers = [asyncio.create_task(watch(pid)) for pid in pids]
    await asyncio.sleep(SETTLE)
    began = time.perf_counter()
    for pid in pids:
        os.killpg(pid, signal.SIGTERM)
    await asyncio.gather(*watchers)
    return time.perf_counter() - began


def minimal_supervisor(count: int) -> float:
    return asyncio.run(_minimal(count))


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (nanosecond schedstat, not ticks)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as file:
                total += int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hva-", dir="/tmp"))
    write_project(work / "proj", args.count)
    daemon = Daemon(work / "home")
    rows: dict[str, list[float]] = {"raw floor": [], "minimal asyncio supervisor": [], "hive": []}
    hive_cpu: list[float] = []
    try:
        with daemon.client() as client:
            client.add_source(work / "proj", name="bench")
            for round_number in range(args.rounds + 1):  # the first round warms up
                floor = raw_floor(args.count)
                minimal = minimal_supervisor(args.count)
                client.start_source("bench")
                time.sleep(SETTLE)  # wait-ok: as for the floors
                cpu_before = cpu_seconds(daemon.pid)
                began = time.perf_counter()
                client.stop_source("bench")
                stopped = time.perf_counter() - began
                if round_number:
                    rows["raw floor"].append(floor)
                    rows["minimal asyncio supervisor"].append(minimal)
                    rows["hive"].append(stopped)
                    hive_cpu.append(cpu_seconds(daemon.pid) - cpu_before)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    floors = rows["raw floor"]
    print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}; stop of {args.count}, "
          f"medians of {args.rounds} rounds")
    print(f"{'':<30}{'wall':>10}{'x floor':>10}")
    for name, times in rows.items():
        ratio = statistics.median(t / f for t, f in zip(times, floors, strict=True))
        print(f"{name:<30}{statistics.median(times) * 1e3:>8.1f}ms{ratio:>9.2f}x")
    cpu = statistics.median(hive_cpu)
    print(f"hive daemon CPU per stop: {cpu * 1e3:.1f} ms, {cpu / args.count * 1e6:.0f} us per service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
