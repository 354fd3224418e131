"""Load: 1,000 services, 200 busy clients, 50 crash loops, against one real daemon each.

Every figure here is reported (``record`` and stdout), never asserted on: the machines
are shared and noisy. What is asserted is correctness under load: every process
started and gone again, every request answered, the daemon alive and its memory bounded.
"""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import psutil
import pytest

from hive_client import DaemonClient, DaemonEvent, HiveError, LogLine, RequestTimeout, ServiceInfo
from tests.reliability.report import record
from tests.support import DaemonProcess, wait_until, write_project

pytestmark = pytest.mark.anyio

T = TypeVar("T")
MIB = 1024 * 1024

# 1,000 services: the scale a big monorepo or a test farm reaches.
BIG = 1000
# The concurrent-clients run; HIVE_LOAD_SECONDS makes it longer (soak) or shorter.
CLIENTS = 200
# At least 5 s, so every event stream sees a blinker come and go.
LOAD_SECONDS = max(5.0, float(os.environ.get("HIVE_LOAD_SECONDS", "60")))
# A request with no answer after this long counts as unanswered.
REQUEST_TIMEOUT = 30.0
CRASHERS = 50
# Memory bounds. Measured (Python 3.11, 2 cores): 49 MiB with 1,000 running, 36 MiB with 200 clients or
# 50 crash loops, 33 MiB idle. About 3x that: room for other Pythons and allocators, yet
# a leak of a few KiB per request, restart or service would cross it.
RSS_BOUND_1000 = 160 * MIB
RSS_BOUND_CLIENTS = 128 * MIB
RSS_BOUND_CRASH = 128 * MIB


# --- helpers ---------------------------------------------------------------------------


def rss(daemon: DaemonProcess) -> int:
    return int(psutil.Process(daemon.pid).memory_info().rss)


def service_processes(home: Path) -> dict[str, list[int]]:
    """Live processes started for the daemon in ``home``, by service FQN, in one scan.

    ``pids_of_service`` scans the process table per service, 1,000 scans here; and other
    daemons on the machine may run services with the same names, so HIVE_HOME tells ours.
    """
    found: dict[str, list[int]] = defaultdict(list)
    wanted = str(home)
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            if env.get("HIVE_HOME") != wanted or "HIVE_SERVICE_FQN" not in env:
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found[env["HIVE_SERVICE_FQN"]].append(process.pid)
    return dict(found)


async def scan(home: Path) -> dict[str, list[int]]:
    # Off the event loop: the scan reads /proc for every process on the machine.
    return await anyio.to_thread.run_sync(service_processes, home)


async def poll_until(
    check: Callable[[], Awaitable[T]], *, timeout: float, what: str, interval: float = 0.2
) -> T:
    """``wait_until`` for a condition that needs the daemon (an async request)."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = await check()
                if value:
                    return value
                await anyio.sleep(interval)  # wait-ok: re-check interval under a deadline
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --- 1. 1,000 services in one source ---------------------------------------------------


def big_project(directory: Path) -> Path:
    # `sleep` is a simple command: the runner execs it without a shell, one process each.
    lines = ['version: "1"', "services:"]
    for index in range(BIG):
        lines += [f"  s{index:04d}:", "    runner: {type: script, script: {run: sleep 3600}}"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hive.yaml").write_text("\n".join(lines) + "\n")
    return directory


async def test_1000_services_start_and_stop(daemon: DaemonProcess, home: Path) -> None:
    fqns = {f"big:s{index:04d}" for index in range(BIG)}
    # What a watcher (a `hive ps --watch`, a dashboard) last saw of each service.
    watched: dict[str, str] = {}

    async def watch(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with DaemonClient(daemon.socket, timeout=180) as watcher, watcher.subscribe_services() as updates:
            task_status.started()
            async for info in updates:
                watched[info.fqn] = info.state

    def watcher_shows(state: str) -> bool:
        return len(watched) == BIG and set(watched.values()) == {state}

    async with DaemonClient(daemon.socket, timeout=180) as client, anyio.create_task_group() as group:
        await group.start(watch)
        began = time.monotonic()
        started: set[str] = set()
        # Follow the starts as they happen; add_source(start=True) also waits for them.
        async with client.subscribe_events(["service_started"], fqn="big:*") as stream:
            await client.add_source(big_project(home / "big"), name="big", start=True)
            with anyio.fail_after(120):
                async for event in stream:
                    started.add(event.fqn)  # type: ignore[attr-defined]
                    if len(started) == BIG or stream.dropped:
                        break
        start_took = time.monotonic() - began

        async def all_running() -> bool:
            services = await client.list_services("big")
            return len(services) == BIG and all(s.state == "running" for s in services)

        # The list says so too (and covers any start event a lagging stream dropped).
        await poll_until(all_running, timeout=120, what=f"{BIG} services running")
        services = await client.list_services("big")
        assert {s.fqn for s in services} == fqns
        running_rss = rss(daemon)
        await wait_until(lambda: watcher_shows("running"), timeout=60, what="the watcher to see all running")

        # One real process per service, and the one the daemon reports.
        processes = await scan(home)
        assert set(processes) == fqns
        assert all(len(pids) == 1 for pids in processes.values()), "one process per service"
        assert {s.fqn: s.pid for s in services} == {fqn: pids[0] for fqn, pids in processes.items()}
        pids = [pids[0] for pids in processes.values()]

        began = time.monotonic()
        await client.stop_source("big")
        stop_took = time.monotonic() - began
        stopped = await client.list_services("big")
        assert all(s.state == "stopped" for s in stopped), {s.state for s in stopped}
        # Reaped by the daemon: not even a zombie is left.
        assert [pid for pid in pids if psutil.pid_exists(pid)] == []
        assert await scan(home) == {}
        await wait_until(lambda: watcher_shows("stopped"), timeout=60, what="the watcher to see all stopped")
        status = await client.status()
        assert status.pid == daemon.pid
        group.cancel_scope.cancel()
    assert daemon.alive()
    assert running_rss < RSS_BOUND_1000
    assert "Traceback" not in daemon.stderr()

    held = (f"all {BIG} running in {start_took:.1f} s (one process each), all stopped in {stop_took:.1f} s, "
            f"none left; a services watcher saw every final state; RSS {running_rss / MIB:.0f} MiB with {BIG} running")
    print(f"\n1,000 services: {held}")
    record("load", "1,000 services in one source, started and stopped", f"{BIG:,} services", held)


# --- 2. 200 concurrent clients ---------------------------------------------------------

TALKERS = 8
BLINKERS = 2
BUSY_PROJECT = """
    version: "1"
    services:
{talkers}
{blinkers}
"""
# A talker writes a line five times a second; a blinker lives 1 s and is restarted,
# so the event streams carry something (exits, restarts, starts) all along.
TALKER = """      talk{n}:
        runner:
          type: script
          script: {{run: 'i=0; while true; do i=$((i+1)); echo "talk{n} line $i"; sleep 0.2; done'}}
"""
BLINKER = """      blink{n}:
        runner: {{type: script, script: {{run: 'echo up; sleep 1; exit 0'}}}}
        restart: {{policy: always, delay: 0.2s, max_delay: 0.5s, reset_after: 0.5s, jitter: false}}
"""


@dataclass
class Kind:
    """What one kind of request got: sent, answered, the errors, each round trip."""

    sent: int = 0
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Tally:
    kinds: dict[str, Kind] = field(default_factory=lambda: defaultdict(Kind))
    stream_items: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    stream_dropped: int = 0
    failures: list[str] = field(default_factory=list)  # anything that is not a request

    async def call(self, kind: str, request: Callable[[], Awaitable[object]]) -> None:
        tally = self.kinds[kind]
        tally.sent += 1
        began = time.monotonic()
        try:
            await request()
        except RequestTimeout:
            tally.errors.append(f"no answer within {REQUEST_TIMEOUT} s")
            return
        except HiveError as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}")
            return
        tally.latencies.append(time.monotonic() - began)
        tally.answered += 1


def stream_problem(items: list[DaemonEvent | LogLine]) -> str | None:
    """What is wrong with what one stream (that never lagged) delivered, if anything."""
    seqs = [item.seq for item in items if not isinstance(item, LogLine)]
    # The bus numbers events daemon-wide: a stream sees them in order, once each.
    if seqs != sorted(set(seqs)):
        return f"events out of order or repeated: {seqs[:20]}"
    # A talker numbers its lines: a follower sees every one, in order.
    numbers = [int(item.message.rsplit(" ", 1)[1]) for item in items
               if isinstance(item, LogLine) and " line " in item.message]
    if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return f"log lines missing or repeated: {numbers[:20]}"
    return None


async def sample_rss(daemon: DaemonProcess, samples: list[int], interval: float = 0.5) -> None:
    """The daemon's RSS twice a second until cancelled."""
    while True:
        samples.append(rss(daemon))
        await anyio.sleep(interval)  # wait-ok: sampling cadence, not a wait for anything


async def test_200_clients_mixing_requests_and_streams(daemon: DaemonProcess, home: Path) -> None:
    write_project(home / "busy", BUSY_PROJECT.format(
        talkers="".join(TALKER.format(n=n) for n in range(TALKERS)),
        blinkers="".join(BLINKER.format(n=n) for n in range(BLINKERS)),
    ))
    talkers = [f"busy:talk{n}" for n in range(TALKERS)]
    tally = Tally()
    rss_samples: list[int] = []
    async with DaemonClient(daemon.socket, timeout=REQUEST_TIMEOUT) as admin:
        await admin.add_source(home / "busy", name="busy", start=True)

        async def talking() -> bool:
            logs = await admin.get_logs(lines=TALKERS * 4)
            return {line.service_fqn for line in logs if "line" in line.message} >= set(talkers)

        await poll_until(talking, timeout=60, what="every talker to write")
        idle_rss = rss(daemon)
        # The clock starts once all clients are connected and their streams open.
        ready = 0
        go = anyio.Event()
        deadline = 0.0

        async def all_ready() -> None:
            nonlocal ready, deadline
            ready += 1
            if ready == CLIENTS:
                deadline = time.monotonic() + LOAD_SECONDS
                go.set()
            await go.wait()

        async def follow(index: int, client: DaemonClient, task_status: anyio.abc.TaskStatus[None]) -> None:
            # A quarter of the clients follow the event bus, a quarter one talker's log.
            label = "events" if index % 4 == 0 else "log follow"
            stream = (client.subscribe_events(fqn="busy:*") if label == "events"
                      else client.stream_logs(talkers[index % TALKERS]))
            items: list[DaemonEvent | LogLine] = []
            try:
                async with stream:
                    task_status.started()
                    await go.wait()
                    with anyio.move_on_after(deadline - time.monotonic()):
                        async for item in stream:
                            items.append(item)
                    # Only our deadline may end it: the daemon ending it early is a failure.
                    if stream.ended:
                        tally.failures.append(f"{label} stream of client {index} ended: {stream.end_reason}")
                    tally.stream_dropped += stream.dropped
                    problem = None if stream.dropped else stream_problem(items)
                    if problem:
                        tally.failures.append(f"{label} stream of client {index}: {problem}")
            except HiveError as exc:
                tally.failures.append(f"{label} stream of client {index}: {type(exc).__name__}: {exc}")
                task_status.started()  # (if it failed to open) the client carries on
            tally.stream_items[label].append(len(items))

        async def one_client(index: int) -> None:
            pace = random.Random(index)
            counted = False
            try:
                async with DaemonClient(daemon.socket, timeout=REQUEST_TIMEOUT,
                                        client_name=f"load-{index}") as client, \
                        anyio.create_task_group() as group:
                    if index % 4 in (0, 1):
                        await group.start(follow, index, client)
                    counted = True
                    await all_ready()
                    while time.monotonic() < deadline:
                        await tally.call("status", client.status)
                        await tally.call("list_services", client.list_services)
                        tail = partial(client.get_logs, talkers[pace.randrange(TALKERS)], lines=20)
                        await tally.call("get_logs", tail)
                        # About 3 requests per 400 ms a client, like a busy dashboard (about
                        # 1,300 a second in all): the generator keeps headroom, so the
                        # latencies are the daemon's and not this process's own queue.
                        await anyio.sleep(pace.uniform(0.2, 0.6))  # wait-ok: load generator cadence
            except HiveError as exc:
                tally.failures.append(f"client {index}: {type(exc).__name__}: {exc}")
                if not counted:  # the others must not wait for it
                    await all_ready()

        async def sample_from_go() -> None:
            await go.wait()
            await sample_rss(daemon, rss_samples)

        async with anyio.create_task_group() as group:
            group.start_soon(sample_from_go)
            # The clients' own deadline ends the run; this one only catches a hang.
            with anyio.fail_after(LOAD_SECONDS + 4 * REQUEST_TIMEOUT + 60):
                async with anyio.create_task_group() as clients:
                    for index in range(CLIENTS):
                        clients.start_soon(one_client, index)
                    await go.wait()
                    began = time.monotonic()
                    cpu_before = sum(psutil.Process(daemon.pid).cpu_times()[:2])
                    own_before = sum(psutil.Process().cpu_times()[:2])
            group.cancel_scope.cancel()
        took = time.monotonic() - began
        daemon_cpu = sum(psutil.Process(daemon.pid).cpu_times()[:2]) - cpu_before
        own_cpu = sum(psutil.Process().cpu_times()[:2]) - own_before
        after = await admin.status()
        assert after.pid == daemon.pid
        await admin.stop_source("busy")
    assert daemon.alive()

    kinds = dict(tally.kinds)
    lines = [f"\n{CLIENTS} clients for {took:.0f} s (HIVE_LOAD_SECONDS={LOAD_SECONDS:g}):"]
    for name, kind in kinds.items():
        lines.append(f"  {name:<14} sent {kind.sent:>7}  answered {kind.answered:>7}  errors {len(kind.errors)}"
                     f"  p50 {ms(percentile(kind.latencies, 0.5)) if kind.latencies else '-'}"
                     f"  p99 {ms(percentile(kind.latencies, 0.99)) if kind.latencies else '-'}")
    for label, counts in tally.stream_items.items():
        lines.append(f"  {label} streams: {len(counts)}, items {sum(counts)} (min {min(counts)} a stream)")
    lines.append(f"  streams lagged (items dropped): {tally.stream_dropped}")
    # The latencies include the load generator's own loop (200 clients in this process).
    lines.append(f"  CPU in {took:.0f} s: daemon {daemon_cpu:.1f} s ({100 * daemon_cpu / took:.0f} % of a core), "
                 f"clients {own_cpu:.1f} s ({100 * own_cpu / took:.0f} %)")
    quarter = max(1, len(rss_samples) // 4)
    lines.append(f"  daemon RSS idle {idle_rss / MIB:.1f} MiB; under load max {max(rss_samples) / MIB:.1f} MiB, "
                 f"first quarter max {max(rss_samples[:quarter]) / MIB:.1f} MiB, "
                 f"last quarter max {max(rss_samples[-quarter:]) / MIB:.1f} MiB")
    print("\n".join(lines))

    assert tally.failures == []
    assert set(kinds) == {"status", "list_services", "get_logs"}
    for name, kind in kinds.items():
        assert kind.errors == [], f"{name}: {kind.errors[:5]}"
        assert kind.answered == kind.sent > 0, name
    # Every stream was open all along and carried something.
    assert len(tally.stream_items["events"]) == CLIENTS // 4
    assert len(tally.stream_items["log follow"]) == CLIENTS // 4
    assert all(count > 0 for counts in tally.stream_items.values() for count in counts)
    assert max(rss_samples) < RSS_BOUND_CLIENTS
    assert "Traceback" not in daemon.stderr()

    total = sum(kind.sent for kind in kinds.values())
    held = "all answered; " + ", ".join(
        f"{name} p50 {ms(percentile(kind.latencies, 0.5))} p99 {ms(percentile(kind.latencies, 0.99))}"
        for name, kind in kinds.items()
    ) + f"; RSS max {max(rss_samples) / MIB:.0f} MiB"
    record("load", f"{CLIENTS} clients: status, list, logs, event and log streams",
           f"{total:,} requests, {CLIENTS // 2} streams, {took:.0f} s", held)


async def tally_list(tally: Tally, client: DaemonClient) -> list[ServiceInfo]:
    services: list[ServiceInfo] = []

    async def ask() -> None:
        services.extend(await client.list_services("crash"))

    await tally.call("list_services", ask)
    return services


# --- 3. 50 services crash-looping --------------------------------------------------------

CRASH_PROJECT_HEAD = 'version: "1"\nservices:\n'
# `false` exits 1 at once; always restart, quickly, so the loop never settles.
CRASHER = ("  c{n:02d}:\n"
           "    runner: {{type: script, script: {{run: 'false'}}}}\n"
           "    restart: {{policy: always, delay: 0.05s, max_delay: 0.4s, jitter: false}}\n")
# How many restarts each crasher must add while the daemon is under watch.
RISES = 15


async def test_50_services_crash_looping(daemon: DaemonProcess, home: Path) -> None:
    project = home / "crash"
    project.mkdir()
    (project / "hive.yaml").write_text(CRASH_PROJECT_HEAD + "".join(CRASHER.format(n=n) for n in range(CRASHERS)))
    fqns = {f"crash:c{n:02d}" for n in range(CRASHERS)}
    # Loops without end, as asked: no start limit (it would leave them crashed).
    (home / "config.toml").write_text("[restart]\nstart_limit_burst = 0\n")
    tally = Tally()
    rss_samples: list[int] = []
    restarting: dict[str, int] = defaultdict(int)
    history: list[dict[str, int]] = []
    watching = True

    async def watch_restarts(admin: DaemonClient, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with admin.subscribe_events(["service_restarting"], fqn="crash:*") as stream:
            task_status.started()
            async for event in stream:
                restarting[event.fqn] += 1  # type: ignore[attr-defined]

    async def ask_status() -> None:
        # Someone keeps asking all along; every answer must come. (It stops by itself,
        # not by cancellation, so no request is cut off half-way.)
        async with DaemonClient(daemon.socket, timeout=REQUEST_TIMEOUT) as client:
            while watching:
                await tally.call("status", client.status)
                await anyio.sleep(0.02)  # wait-ok: the load generator's cadence

    async with DaemonClient(daemon.socket, timeout=REQUEST_TIMEOUT) as admin:
        await admin.reload()  # the config.toml above

        async def counts() -> dict[str, int]:
            services = await tally_list(tally, admin)
            current = {s.fqn: s.restart_count for s in services}
            assert set(current) == fqns
            if history:  # a count never goes back
                assert all(current[f] >= history[-1][f] for f in fqns)
            history.append(current)
            return current

        async def each_restarted_once() -> bool:
            return all(n >= 1 for n in (await counts()).values())

        async with anyio.create_task_group() as background:
            background.start_soon(sample_rss, daemon, rss_samples)
            await background.start(watch_restarts, admin)
            async with anyio.create_task_group() as askers:
                for _ in range(4):
                    askers.start_soon(ask_status)
                await admin.add_source(project, name="crash", start=True)
                await poll_until(each_restarted_once, timeout=60, what="every crasher to restart once")
                baseline = history[-1]
                watch_began = time.monotonic()

                async def each_rose() -> bool:
                    current = await counts()
                    return all(current[f] >= baseline[f] + RISES for f in fqns)

                await poll_until(each_rose, timeout=120, what=f"every crasher to restart {RISES} more times")
                watched = time.monotonic() - watch_began
                watching = False
            background.cancel_scope.cancel()

        await admin.stop_source("crash")
        stopped = await admin.list_services("crash")
        assert {s.state for s in stopped} == {"stopped"}
        left = await scan(home)
        assert left == {}
        # Still stopped after the scan: a commanded stop is never restarted.
        again = await admin.list_services("crash")
        assert {s.state for s in again} == {"stopped"}
        assert {s.fqn: s.restart_count for s in again} == {s.fqn: s.restart_count for s in stopped}
        assert (await admin.status()).pid == daemon.pid
    assert daemon.alive()

    status = tally.kinds["status"]
    total_restarts = sum(history[-1].values())
    print(f"\n{CRASHERS} crash loops: watched {watched:.1f} s, {total_restarts} restarts in all "
          f"({len(history)} list polls), restart events seen {sum(restarting.values())}; "
          f"status sent {status.sent} answered {status.answered}, "
          f"p50 {ms(percentile(status.latencies, 0.5))} p99 {ms(percentile(status.latencies, 0.99))}; "
          f"RSS max {max(rss_samples) / MIB:.0f} MiB")
    for name, kind in tally.kinds.items():
        assert kind.errors == [], f"{name}: {kind.errors[:5]}"
        assert kind.answered == kind.sent > 0, name
    assert set(restarting) == fqns  # the bus announced each one's restarts
    assert max(rss_samples) < RSS_BOUND_CRASH
    assert "Traceback" not in daemon.stderr()
    record("load", f"{CRASHERS} services crash-looping at once (restart: always)",
           f"{total_restarts:,} restarts, {status.sent:,} status requests",
           f"each restarted {RISES}+ times in {watched:.0f} s, all answered "
           f"(status p99 {ms(percentile(status.latencies, 0.99))}), RSS max {max(rss_samples) / MIB:.0f} MiB, "
           "none left after stop")

