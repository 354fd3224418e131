#!/usr/bin/env python3
"""Container starts: Hive against the engine's own CLI, measured in the same run.

    python bench/containers.py [--engines docker podman] [--repeat 7]

For each engine: the time from ``start_service`` to its answer (the container is
``running`` and recorded), against ``<engine> run -d`` of the same image and command issued
directly (and ``rm -f`` after each, outside the timing). Each Hive start is paired with a
raw start just before it; the ratio is the median of the pairs' ratios. Target <= 1.2x.

Needs the engines and the test image: ``sudo scripts/ci-engines.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.supervise import Daemon  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["docker", "podman"])
    parser.add_argument("--repeat", type=int, default=7)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
