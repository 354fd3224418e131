#!/usr/bin/env python3
"""Containers: Hive against the engine's own CLI, measured in the same run.

    python bench/containers.py [--engines docker podman] [--repeat 7] [--count 100] [--crashes 7]

For each engine:

- **start of one container**: the time from ``start_service`` to its answer (the
  container is ``running`` and recorded), against ``<engine> run -d`` of the same image
  and command issued directly (and ``rm -f`` after each, outside the timing). Each Hive
  start is paired with a raw start just before it; the ratio is the median of the pairs'
  ratios. Target <= 1.2x.
- **100 supervised containers**: the daemon's helper processes (its descendants: none on
  the Engine API; the former CLI runner had a ``wait`` and a ``logs -f`` per container) and
  the memory of the daemon plus its helpers (RSS), against the same daemon idle. Targets:
  at most 2 helpers, at most 150 MiB.
- **start and stop of 100**: ``hive up`` of a project of 100 containers until all run, and
  its stop, against 100 ``<engine> run -d`` issued at once, and 100 ``<engine> rm -f``.
- **crash-to-restart gap** of one container that exits 1 after 0.5 s (``restart:
  on-failure``, no delay): from the engine's ``die`` event to its next ``start`` event (the
  engine's own clock), against a loop of ``<engine> wait`` then ``<engine> start`` on a
  container doing the same. Medians; target <= 1.2x.

Needs the engines and the test image: ``sudo scripts/ci-engines.sh``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.supervise import Daemon  # noqa: E402
from hive_client import DaemonError  # noqa: E402
from runners._engine_logs import parse_stamp  # noqa: E402

IMAGE = "localhost/hive-test:busybox"
COMMAND = ["sleep", "1000"]


def raw_start(engine: str, name: str) -> float:
    began = time.perf_counter()
    subprocess.run([engine, "run", "-d", "--network", "host", "--name", name, IMAGE, *COMMAND],
                   check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - began
    subprocess.run([engine, "rm", "-f", name], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return took


def write_project(directory: Path, engine: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hive.yaml").write_text(
        'version: "1"\n'
        "services:\n"
        "  box:\n"
        f"    runner: {{type: {engine}, {engine}: {{image: {IMAGE}, command: [sleep, '1000'], "
        "network_mode: host}}\n"
        "    stop_grace: 0s\n"
    )


def measure(engine: str, work: Path, repeat: int) -> tuple[float, float, float]:
    project = work / f"proj-{engine}"
    write_project(project, engine)
    daemon = Daemon(work / f"home-{engine}")
    pairs = []
    try:
        with daemon.client() as client:
            client.add_source(project, name="bench")
            client.start_service("bench:box")  # warm: the image and the engine's caches
            client.stop_service("bench:box")
            raw_start(engine, "hive-bench-raw")
            for _ in range(repeat):
                raw = raw_start(engine, "hive-bench-raw")
                began = time.perf_counter()
                client.start_service("bench:box")
                hive = time.perf_counter() - began
                info = client.get_service_status("bench:box")
                assert info.state == "running", info
                client.stop_service("bench:box")
                pairs.append((raw, hive))
    finally:
        daemon.stop()
    raw_median = statistics.median(r for r, _ in pairs)
    hive_median = statistics.median(h for _, h in pairs)
    ratio = statistics.median(h / r for r, h in pairs)
    return raw_median, hive_median, ratio


def write_many(directory: Path, engine: str, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ['version: "1"', "services:"]
    for index in range(count):
        lines += [f"  c{index}:",
                  f"    runner: {{type: {engine}, {engine}: {{image: {IMAGE}, command: [sleep, '1000'], "
                  "network_mode: host}}",
                  "    stop_grace: 0s"]
    (directory / "hive.yaml").write_text("\n".join(lines) + "\n")


def helpers(pid: int) -> tuple[int, int]:
    """(how many descendants the daemon has, their RSS in bytes)."""
    count = rss = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            rss += child.memory_info().rss
            count += 1
        except psutil.Error:
            pass
    return count, rss


def raw_many(engine: str, count: int) -> tuple[float, float]:
    """(start, stop) seconds of ``count`` containers run and removed with the CLI, at once."""
    names = [f"hive-bench-raw-{index}" for index in range(count)]
    began = time.perf_counter()
    runs = [subprocess.Popen([engine, "run", "-d", "--network", "host", "--name", name, IMAGE, *COMMAND],
                             stdout=subprocess.DEVNULL) for name in names]
    assert all(run.wait() == 0 for run in runs)
    started = time.perf_counter() - began
    began = time.perf_counter()
    removals = [subprocess.Popen([engine, "rm", "-f", name], stdout=subprocess.DEVNULL) for name in names]
    assert all(removal.wait() == 0 for removal in removals)
    return started, time.perf_counter() - began


def measure_many(engine: str, work: Path, count: int) -> dict[str, float]:
    project = work / f"many-{engine}"
    write_many(project, engine, count)
    daemon = Daemon(work / f"home-many-{engine}")
    figures: dict[str, float] = {}
    try:
        figures["idle_rss"] = daemon.rss()
        figures["raw_start"], figures["raw_stop"] = raw_many(engine, count)
        with daemon.client() as client:
            client.add_source(project, name="many")
            began = time.perf_counter()
            try:
                client.start_source("many")
            except DaemonError:  # answered before all ran ("still starting"): wait for them
                deadline = time.monotonic() + 600
                while {info.state for info in client.list_services("many")} != {"running"}:
                    assert time.monotonic() < deadline, "the containers did not all start in 10 min"
                    time.sleep(0.05)
            figures["hive_start"] = time.perf_counter() - began
            states = {info.state for info in client.list_services("many")}
            assert states == {"running"}, states
            figures["helpers"], helper_rss = helpers(daemon.pid)
            figures["total_rss"] = daemon.rss() + helper_rss
            began = time.perf_counter()
            client.stop_source("many")
            figures["hive_stop"] = time.perf_counter() - began
    finally:
        daemon.stop()
    return figures


class Events:
    """``<engine> events`` of containers: (time in ns, action, name) of each die and start."""

    def __init__(self, engine: str) -> None:
        self.seen: list[tuple[int, str, str]] = []
        self._process = subprocess.Popen(
            [engine, "events", "--format", "{{json .}}", "--filter", "type=container",
             "--filter", f"event={'died' if engine == 'podman' else 'die'}", "--filter", "event=start"],
            stdout=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                event = json.loads(line)
                actor = event.get("Actor") or {}
                # Docker: Actor.Attributes.name, timeNano; podman: Name, Time (RFC 3339).
                name = (actor.get("Attributes") or {}).get("name", "") or event.get("Name") or ""
                action = event.get("Action") or event.get("Status") or ""
                action = "die" if action == "died" else action  # podman's CLI says died
                stamp = int(event.get("timeNano") or event.get("TimeNano") or 0) or _nanos(event.get("Time"))
            except (ValueError, AttributeError, TypeError):
                continue
            self.seen.append((stamp, action, name))

    def gaps(self, belongs: str) -> list[float]:
        """Seconds from each die of a container whose name contains ``belongs`` to the
        next start of one."""
        found, died = [], None
        for stamp, action, name in sorted(self.seen):
            if belongs not in name:
                continue
            if action == "die":
                died = stamp
            elif action == "start" and died is not None:
                found.append((stamp - died) / 1e9)
                died = None
        return found

    def close(self) -> None:
        self._process.terminate()
        self._process.wait()


def _nanos(text: object) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (podman's events); 0 if it is not one."""
    stamp = parse_stamp(str(text).encode()) if text else None
    return stamp[0] * 1_000_000_000 + stamp[1] if stamp else 0


CRASHER = ["sh", "-c", "sleep 0.5; exit 1"]


def floor_restarts(engine: str, crashes: int) -> None:
    """``<engine> wait`` then ``<engine> start``, ``crashes`` times, on a crashing container."""
    name = "hive-bench-floor"
    subprocess.run([engine, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([engine, "run", "-d", "--network", "host", "--name", name, IMAGE, *CRASHER],
                   check=True, stdout=subprocess.DEVNULL)
    for _ in range(crashes):
        subprocess.run([engine, "wait", name], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([engine, "start", name], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([engine, "rm", "-f", name], stdout=subprocess.DEVNULL)


def measure_gap(engine: str, work: Path, crashes: int) -> tuple[float, float]:
    """(floor, hive) median crash-to-restart gaps, in seconds."""
    project = work / f"crash-{engine}"
    project.mkdir(parents=True, exist_ok=True)
    (project / "hive.yaml").write_text(
        'version: "1"\n'
        "services:\n"
        "  crasher:\n"
        f"    runner: {{type: {engine}, {engine}: {{image: {IMAGE}, command: {json.dumps(CRASHER)}, "
        "network_mode: host}}\n"
        "    restart: {policy: on-failure, delay: 0s}\n"
        "    stop_grace: 0s\n"
    )
    events = Events(engine)
    daemon = Daemon(work / f"home-crash-{engine}")
    try:
        floor_restarts(engine, crashes)
        with daemon.client() as client:
            client.add_source(project, name="crash")
            client.start_source("crash")
            with client.subscribe_events(["service_restarting"]) as restarts:
                for seen, _ in enumerate(restarts, start=1):
                    if seen >= crashes + 1:
                        break
            client.stop_source("crash")
    finally:
        daemon.stop()
        events.close()
    floor, hive = events.gaps("hive-bench-floor"), events.gaps("hive-crash.crasher")
    assert floor and hive, (floor, hive)
    return statistics.median(floor), statistics.median(hive)


def report_many(engine: str, figures: dict[str, float], count: int) -> bool:
    mib = 1024 * 1024
    label = f"{engine} {count} containers"
    print(f"{label + ' start':<28}{figures['raw_start']:>11.2f}s{figures['hive_start']:>11.2f}s"
          f"{figures['hive_start'] / figures['raw_start']:>8.2f}x")
    print(f"{label + ' stop':<28}{figures['raw_stop']:>11.2f}s{figures['hive_stop']:>11.2f}s"
          f"{figures['hive_stop'] / figures['raw_stop']:>8.2f}x")
    total = figures["total_rss"] / mib
    print(f"{label + ' memory':<28}{figures['idle_rss'] / mib:>9.1f}MiB{total:>9.1f}MiB"
          f"{figures['total_rss'] / figures['idle_rss']:>8.2f}x   <= 150 MiB (floor: the daemon idle)")
    print(f"{label + ' helpers':<28}{'':>12}{int(figures['helpers']):>12}{'':>9}   <= 2")
    return figures["helpers"] <= 2 and total <= 150


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["docker", "podman"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--crashes", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hvc-", dir="/tmp"))
    ok = True
    try:
        print(f"{'start of one container':<28}{'engine CLI':>12}{'hive':>12}{'ratio':>9}   target")
        for engine in args.engines:
            if shutil.which(engine) is None:
                print(f"{engine:<28}  not installed (sudo scripts/ci-engines.sh)")
                ok = False
                continue
            raw, hive, ratio = measure(engine, work, args.repeat)
            ok &= ratio <= 1.2
            print(f"{engine:<28}{raw * 1e3:>10.1f}ms{hive * 1e3:>10.1f}ms{ratio:>8.2f}x   <= 1.2x")
            ok &= report_many(engine, measure_many(engine, work, args.count), args.count)
            floor, gap = measure_gap(engine, work, args.crashes)
            ok &= gap / floor <= 1.2
            print(f"{engine + ' crash-to-restart gap':<28}{floor * 1e3:>10.1f}ms{gap * 1e3:>10.1f}ms"
                  f"{gap / floor:>8.2f}x   <= 1.2x (floor: wait + start)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
