"""A service writing as fast as it can: bounded memory, bounded disk, no starvation."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tests.logs.helpers import rss, running_hub, wait_for_message, write, writer

pytestmark = pytest.mark.anyio

FLOOD = """
import sys, time
write = sys.stdout.write
end = time.monotonic() + float(sys.argv[1])
i = 0
while time.monotonic() < end:
    for _ in range(1000):
        i += 1
        write("flood line %d with a payload that looks like a real log line, ok\\n" % i)
write("LAST %d\\n" % i)
sys.stdout.flush()
open(sys.argv[2], "w").write(str(i))
"""

# The bound this test holds the hub to: RSS growth over the baseline while a child
# floods with buffer_lines=10000 (the buffer itself is ~3 MB of 70-byte lines).
RSS_LIMIT = 60 * 2**20


@pytest.mark.slow
async def test_flood_keeps_memory_and_disk_bounded(home: Path) -> None:
    fqn, quiet = "proj:flood", "proj:quiet"
    count_file = home / "count"
    settings = {"buffer_lines": 10_000, "max_file_bytes": 1 << 20, "keep_files": 3}
    async with running_hub(home, **settings) as hub:
        hub.follow(fqn)
        hub.follow(quiet)
        gc.collect()
        baseline = rss()
        peak = baseline
        samples = 0
        received = 0
        started = time.monotonic()
        with (
            hub.subscribe(fqn, maxlen=1024) as sub,
            hub.subscribe(fqn, maxlen=1) as flood_started,
            hub.subscribe(quiet) as quiet_sub,
        ):

            async def consume() -> None:
                # A live reader (like `hive logs -f`) that also samples memory.
                nonlocal peak, samples, received
                async for _line in sub:
                    received += 1
                    if received % 2000 == 0:
                        peak = max(peak, rss())
                        samples += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                argv = [sys.executable, "-c", FLOOD, "3", str(count_file)]
                async with writer(hub, fqn, argv) as process:
                    # Mid-flood, another service's line still gets through promptly.
                    await wait_for_message(flood_started, lambda _: True)
                    flood_started.close()
                    quiet_start = time.monotonic()
                    await write(hub, quiet, "echo 'still heard'")
                    await wait_for_message(quiet_sub, "still heard", timeout=5)
                    quiet_latency = time.monotonic() - quiet_start
                    with anyio.fail_after(30):
                        assert await process.wait() == 0
                await hub.drain(fqn)
                sub.close()
        elapsed = time.monotonic() - started
        peak = max(peak, rss())
        written = int(count_file.read_text())
        stats = hub.stats()

        # The last line the child wrote is the last line we have.
        (last,) = hub.query(fqn, lines=1)
        assert last.message == f"LAST {written}"
        assert hub.offsets(fqn)[0] == hub.capture_paths(fqn)[0].stat().st_size
        # Rotation happened, and no more than keep_files old files exist.
        path = hub.log_path(fqn)
        old = sorted(p.name for p in path.parent.iterdir() if p.name.startswith("flood.log."))
        assert old == ["flood.log.1", "flood.log.2", "flood.log.3"]
        # The capture file's disk use is bounded (consumed and skipped bytes are freed).
        out, _ = hub.capture_paths(fqn)
        on_disk = out.stat().st_blocks * 512
        assert len(hub.query(fqn)) == 10_000

    growth = peak - baseline
    print(
        f"\nflood: child wrote {written} lines ({out.stat().st_size / 2**20:.0f} MiB) in 3 s;"
        f" hub handled {stats['lines']} lines in {elapsed:.1f} s"
        f" ({stats['lines'] / elapsed:,.0f} lines/s, {stats['bytes_read'] / elapsed / 2**20:.0f} MiB/s),"
        f" skipped {stats['skipped_bytes'] / 2**20:.0f} MiB;"
        f" RSS growth {growth / 2**20:.1f} MiB (peak of {samples} samples, limit"
        f" {RSS_LIMIT / 2**20:.0f} MiB); capture file on disk {on_disk / 2**20:.1f} MiB;"
        f" quiet service latency {quiet_latency * 1000:.0f} ms"
    )
    assert samples > 0
    assert growth < RSS_LIMIT
    assert on_disk < 16 * 2**20


def _max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def _write_alternating_while_the_loop_is_blocked(first: Path, second: Path, count: int) -> None:
    # Deliberately blocking (not awaited): the hub can't read inotify meanwhile, so
    # more than max_queued_events (16384) distinct events pile up and the queue overflows.
    script = (
        "import os, sys\n"
        "flags = os.O_WRONLY | os.O_APPEND\n"
        "a = os.open(sys.argv[1], flags); b = os.open(sys.argv[2], flags)\n"
        "for i in range(int(sys.argv[3])):\n"
        "    os.write(a, b'a%d\\n' % i); os.write(b, b'b%d\\n' % i)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(first), str(second), str(count)], check=True)


async def test_inotify_queue_overflow_rereads_everything(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hive.logs")
    count = _max_queued_events()  # two files: twice the queue, no event coalesced
    async with running_hub(home) as hub:
        hub.follow("proj:a")
        hub.follow("proj:b")
        with hub.subscribe("proj:a", maxlen=10) as sub_a, hub.subscribe("proj:b", maxlen=10) as sub_b:
            await anyio.wait_all_tasks_blocked()  # the hub is idle, waiting on inotify
            _write_alternating_while_the_loop_is_blocked(
                hub.capture_paths("proj:a")[0], hub.capture_paths("proj:b")[0], count
            )
            await wait_for_message(sub_a, f"a{count - 1}")
            await wait_for_message(sub_b, f"b{count - 1}")
    assert any("overflow" in r.getMessage() for r in caplog.records)
