#!/usr/bin/env python3
"""The cost of one ``cmd`` health check of a container, measured in the same run:

    python bench/container_checks.py [--engines docker podman] [--count 40] [--rounds 5]

For each engine, on one running busybox container:

- **floor**: ``<engine> exec <id> true`` run directly, one process per check;
- **CLI check**: ``<engine> exec <id> sh -c true``, what Hive ran for a check before (a CLI
  process per check);
- **API check**: what Hive runs now, :func:`runners._engine_exec.run_check` (``sh -c true``
  through ``POST /containers/{id}/exec``, ``POST /exec/{id}/start``, ``GET /exec/{id}/json``
  on the engine's socket), in this process.

Per check: the wall time, and the CPU time on the caller's side (this process's, plus its
children's: the CLI processes). The engine's own work (making the exec, runc, the shim) is
not counted: it is the same for both ways. Each round runs ``count`` checks of each kind,
one after the other; the figures are the medians of the rounds; ratios are against the
floor. Targets: the API check's wall time at most the floor's (no process to start), its
CPU time at most half the floor's (the engine CLI's start alone is most of it).

Needs the engines and the test image: ``sudo scripts/ci-engines.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runners._container_runner import ContainerRunner  # noqa: E402
from runners._engine_exec import run_check  # noqa: E402
from runners.docker import DockerRunner  # noqa: E402
from runners.podman import PodmanRunner  # noqa: E402

IMAGE = "localhost/hive-test:busybox"
NAME = "hive-bench-checks"
RUNNERS: dict[str, type[ContainerRunner]] = {"docker": DockerRunner, "podman": PodmanRunner}


def _cpu() -> float:
    """CPU seconds of this process and of its ended children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _timed(count: int, check: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per check, over ``count`` checks."""
    wall, cpu = time.perf_counter(), _cpu()
    for _ in range(count):
        await check()
    return (time.perf_counter() - wall) / count, (_cpu() - cpu) / count


def _cli(argv: list[str]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        process = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL)
        assert await process.wait() == 0, argv

    return run


def measure(engine: str, count: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) per check of each kind, on a container of the bench's own."""
    subprocess.run([engine, "rm", "-f", NAME], capture_output=True)
    container_id = subprocess.run(
        [engine, "run", "-d", "--network", "host", "--name", NAME, IMAGE, "sleep", "1000"],
        check=True, capture_output=True, text=True).stdout.strip()
    try:
        return asyncio.run(_measure(engine, container_id, count, rounds))
    finally:
        subprocess.run([engine, "rm", "-f", NAME], capture_output=True)


async def _measure(engine: str, container_id: str, count: int, rounds: int) -> dict[str, tuple[float, float]]:
    api = RUNNERS[engine]().api(None)

    async def through_api() -> None:
        run = await run_check(api, container_id, "true", 30)
        assert run.exit_code == 0, run

    kinds = {
        "floor": _cli([engine, "exec", container_id, "true"]),
        "CLI check": _cli([engine, "exec", container_id, "sh", "-c", "true"]),
        "API check": through_api,
    }
    figures: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    try:
        for check in kinds.values():  # warm: the engine's caches, the API's connection
            await check()
        for _ in range(rounds):
            for kind, check in kinds.items():
                figures[kind].append(await _timed(count, check))
    finally:
        await api.aclose()
    return {kind: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
            for kind, runs in figures.items()}


def report(engine: str, figures: dict[str, tuple[float, float]]) -> bool:
    floor_wall, floor_cpu = figures["floor"]
    for kind, (wall, cpu) in figures.items():
        target = {"API check": "   <= 1.0x wall, <= 0.5x CPU"}.get(kind, "")
        print(f"{engine + ' ' + kind:<22}{wall * 1e3:>9.1f}ms{wall / floor_wall:>8.2f}x"
              f"{cpu * 1e3:>9.2f}ms{cpu / floor_cpu:>8.2f}x{target}")
    wall, cpu = figures["API check"]
    return wall <= floor_wall and cpu <= 0.5 * floor_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["docker", "podman"])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ok = True
    print(f"{'one cmd check':<22}{'wall':>11}{'ratio':>8}{'CPU':>11}{'ratio':>8}   target (floor: <engine> exec ID true)")
    for engine in args.engines:
        if shutil.which(engine) is None:
            print(f"{engine:<22}  not installed (sudo scripts/ci-engines.sh)")
            ok = False
            continue
        ok &= report(engine, measure(engine, args.count, args.rounds))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest CLI process: {peak:.1f} MiB resident (the API check starts none)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
