#!/usr/bin/env python3
"""Log capture throughput: how fast the log hub turns a service's output into lines.

    python bench/logs.py [--lines 200000] [--rounds 3]

A child writes ``--lines`` lines of about 70 bytes and exits; then the hub follows its
output and drains it, timed (reading, splitting, levels, ring, log file). Two captures:

- memory capture (a memfd: what script services write to since the full-disk work);
- capture file on disk (what container runners' output still goes through).

Floor, measured in the same run: the same bytes read back in 256 KiB chunks and split
into decoded lines by a bare loop, without the hub. Best of ``--rounds`` each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

from hive.daemon.logs import LogHub  # noqa: E402
from hive.daemon.settings import LogsSection  # noqa: E402
from runners._capture import MemoryCapture  # noqa: E402

CHILD = """
import sys
write = sys.stdout.write
for i in range(int(sys.argv[1])):
    write("bench line %d with a payload that looks like a real log line, ok\\n" % i)
"""


def fill(fd: int, lines: int) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(lines)], stdout=fd, check=True)


def floor(lines: int) -> float:
    capture = MemoryCapture("bench:floor", "stdout")
    try:
        fill(capture.writer, lines)
        started = time.perf_counter()
        pos, partial, count = 0, b"", 0
        while True:
            data = os.pread(capture.reader, 256 * 1024, pos)
            if not data:
                break
            pos += len(data)
            parts = (partial + data).split(b"\n")
            partial = parts.pop()
            for raw in parts:
                raw.decode("utf-8", "replace")
                count += 1
        assert count == lines, count
        return time.perf_counter() - started
    finally:
        capture.close()


async def through_hub(home: Path, lines: int, memory: bool) -> float:
    hub = LogHub(home / "logs", home / "run", LogsSection(max_file_bytes=1 << 30))
    fqn = f"bench:{'memory' if memory else 'file'}{time.monotonic_ns()}"
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        if memory:
            capture = MemoryCapture(fqn, "stdout")
            fill(capture.writer, lines)
            capture.close_writer()
            started = time.perf_counter()
            hub.follow(fqn, output=(capture.reader, -1), owner=capture)
        else:
            out, _ = hub.capture_paths(fqn)
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fill(fd, lines)
            os.close(fd)
            started = time.perf_counter()
            hub.follow(fqn)
        await hub.drain(fqn)
        elapsed = time.perf_counter() - started
        handled = hub.stats()["lines"]
        assert handled == lines, f"{handled} of {lines} lines"
        hub.unfollow(fqn)
        tg.cancel_scope.cancel()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hive-bench-logs-") as work:
        home = Path(work)
        best_floor = min(floor(args.lines) for _ in range(args.rounds))
        best = {
            name: min(anyio.run(through_hub, home, args.lines, memory) for _ in range(args.rounds))
            for name, memory in (("memory capture", True), ("capture file", False))
        }
    rate = args.lines / best_floor
    print(f"{args.lines} lines of ~70 bytes, best of {args.rounds}")
    print(f"{'path':<18}{'seconds':>10}{'lines/s':>14}{'x floor':>9}")
    print(f"{'floor (bare loop)':<18}{best_floor:>10.3f}{rate:>14,.0f}{1.0:>9.1f}")
    for name, elapsed in best.items():
        print(f"{name:<18}{elapsed:>10.3f}{args.lines / elapsed:>14,.0f}{elapsed / best_floor:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
