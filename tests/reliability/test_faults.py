"""Faults, end to end against real daemons: kill -9 at random moments, a full disk under
HIVE_HOME, a damaged state database, the container engine restarted under running
containers, and a core plugin failing in a loop.

Everything is real: daemon processes on a real socket, service processes found by their
environment, SQLite files checked with SQLite itself, a real dockerd. Each test records its
outcome with :func:`tests.reliability.report.record` for the suite's summary table.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from hive_client import BlockingClient, DaemonClient, HiveError, PluginStateChanged, ServiceInfo
from hive_client.protocol import DaemonStatus
from tests.reliability.report import record
from tests.support import (
    DaemonProcess,
    StartFailed,
    run_cli,
    start_daemon,
    wait_for,
    wait_until,
    write_project,
)

MARKER = "HIVE_SUPERVISOR"  # the variable that ties a service process to its daemon's home
TRANSIENT = {"starting", "stopping", "backoff"}


# --- what really runs --------------------------------------------------------------------


def running_instances(home: Path) -> dict[tuple[str, int], list[int]]:
    """(service FQN, instance) -> pids of live processes carrying this home's marker.

    Like ``pids_of_service`` in tests/support.py, but keyed by instance and limited to
    this daemon's home: other tests running at the same time use the same FQNs.
    """
    marker = os.path.realpath(home)
    found: dict[tuple[str, int], list[int]] = {}
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            if os.path.realpath(env.get(MARKER, "/nonexistent")) != marker:
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        key = (env.get("HIVE_SERVICE_FQN", "?"), int(env.get("HIVE_INSTANCE", "0") or 0))
        found.setdefault(key, []).append(process.pid)
    return found


def kill_leftovers(home: Path) -> dict[tuple[str, int], list[int]]:
    """SIGKILL what still runs of this home's services (a failed test must not leave
    processes behind for the next one); what there was."""
    left = running_instances(home)
    for pids in left.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return left


def integrity(db: Path) -> str:
    """SQLite's own verdict on the whole file (read-only: the check changes nothing)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


def base_of(info: ServiceInfo) -> tuple[str, int]:
    return info.fqn.partition("#")[0], info.instance or 0


def consistency(infos: list[ServiceInfo], procs: dict[tuple[str, int], list[int]]) -> list[str]:
    """What is wrong between the daemon's view and the processes (empty: nothing)."""
    problems: list[str] = []
    reported = {base_of(i): i.pid for i in infos if i.state in ("running", "unhealthy")}
    for key, pids in sorted(procs.items()):
        if len(pids) > 1:
            problems.append(f"{key[0]}#{key[1]} duplicated: processes {sorted(pids)}")
        if key not in reported:
            problems.append(f"{key[0]}#{key[1]} runs (pids {sorted(pids)}) but the daemon does not report it running")
        elif reported[key] not in pids:
            problems.append(f"{key[0]}#{key[1]}: the daemon reports pid {reported[key]}, the process is {sorted(pids)}")
    for key, pid in sorted(reported.items()):
        if key not in procs:
            problems.append(f"{key[0]}#{key[1]}: the daemon reports it running (pid {pid}), no such process")
    by_service: dict[str, list[ServiceInfo]] = {}
    for info in infos:
        by_service.setdefault(base_of(info)[0], []).append(info)
    for fqn, entries in sorted(by_service.items()):
        wanted = entries[0].instances if entries[0].desired == "running" else 0
        alive = sum(1 for key in procs if key[0] == fqn)
        if alive != wanted:
            problems.append(f"{fqn}: {alive} processes, expected {wanted} "
                            f"(desired {entries[0].desired}, instances {entries[0].instances})")
    return problems


def settled_view(socket: Path, home: Path, *, timeout: float = 45.0,
                 what: str = "") -> tuple[list[ServiceInfo], dict[tuple[str, int], list[int]]]:
    """Wait until the daemon has settled (no instance starting, stopping or in backoff)
    and agrees with the processes; the view then. On the deadline: what disagrees."""
    last: list[str] = []

    def agreed() -> tuple[list[ServiceInfo], dict[tuple[str, int], list[int]]] | None:
        nonlocal last
        with BlockingClient(socket, timeout=30) as client:
            infos = client.list_services()
        procs = running_instances(home)
        busy = [i.fqn for i in infos if i.state in TRANSIENT]
        last = [f"still {', '.join(busy)}"] if busy else consistency(infos, procs)
        return None if last else (infos, procs)

    try:
        view = wait_for(agreed, timeout=timeout, what="the daemon to settle")
    except AssertionError:
        raise AssertionError(f"{what}: not settled after {timeout} s: " + "; ".join(last)) from None
    assert view is not None
    return view


# --- 1. kill -9 at random moments --------------------------------------------------------


def _seed() -> int:
    given = os.environ.get("HIVE_FAULT_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 31)


def _project_yaml(version: int) -> str:
    """Services a, b, c (c carries the version: a reload restarts it) and x<version % 2>
    (a reload removes one and adds the other)."""
    sleeper = '{type: script, script: {run: "sleep 3600"}}'
    return (
        'version: "1"\nservices:\n'
        f"  a:\n    runner: {sleeper}\n"
        f"  b:\n    runner: {sleeper}\n"
        f"  c:\n    runner: {sleeper}\n    environment: {{static: {{REL_V: \"{version}\"}}}}\n"
        f"  x{version % 2}:\n    runner: {sleeper}\n"
    )


@dataclass
class KillLog:
    """What the kills hit: per kill its phase, its delay and whether the request had
    been answered (for a kill during the daemon's start-up: whether it was ready)."""

    kills: list[tuple[str, float, bool]] = field(default_factory=list)
    setup_kills: int = 0  # kill -9 at a quiet moment, to boot a daemon with work to do
    settles: list[float] = field(default_factory=list)  # restart -> settled and consistent
    # How long each kind of request took when it was answered (first guesses from this
    # machine): kill moments are drawn over that span, so most land mid-request.
    spans: dict[str, float] = field(default_factory=lambda: {
        "daemon start-up": 0.35, "hive up": 0.03, "reload": 0.12, "scale up": 0.01, "scale down": 0.07})

    def moment(self, rng: random.Random, kind: str) -> float:
        return rng.random() * 1.2 * self.spans[kind]

    def kill(self, daemon: DaemonProcess, phase: str, kind: str, delay: float,
             call: Callable[[BlockingClient], object]) -> bool:
        answered, took = _kill_during(daemon, call, delay)
        if answered:
            self.spans[kind] = took
        self.kills.append((phase, delay, answered))
        return answered

    def summary(self) -> str:
        phases: dict[str, list[bool]] = {}
        for phase, _, done in self.kills:
            phases.setdefault(phase, []).append(done)
        spread = ", ".join(f"{phase} {len(done)} ({done.count(False)} mid-request)"
                           for phase, done in phases.items())
        return (f"{len(self.kills)} kills: {spread}; restarts settled in at most "
                f"{max(self.settles):.2f} s")


def _env_of(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


def _kill_during(daemon: DaemonProcess, call: Callable[[BlockingClient], object],
                 delay: float) -> tuple[bool, float]:
    """Send a request and kill -9 the daemon ``delay`` s later; whether it was answered
    by then, and how long the answer took.

    A blocking client in a thread: the test's own event loop is not involved in the
    connection the kill cuts."""
    answered = threading.Event()
    took = 0.0
    with BlockingClient(daemon.socket, timeout=60) as client:
        client.ping()  # the hello is done: the delay counts from the request

        def send() -> None:
            nonlocal took
            began = time.monotonic()
            with contextlib.suppress(HiveError, OSError):
                call(client)
                took = time.monotonic() - began
                answered.set()

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        time.sleep(delay)  # wait-ok: the random moment of the kill -9
        daemon.kill9()
        thread.join(60)
    return answered.is_set(), took


def _boot_and_kill(home: Path, delay: float) -> bool:
    """Start a daemon and kill -9 it ``delay`` s into its start-up; whether it was ready."""
    read_end, write_end = os.pipe()
    with open(home / "boot-killed.stderr", "ab") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "hive.daemon", "--home", str(home), "--foreground",
             "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, pass_fds=(write_end,),
        )
    os.close(write_end)
    try:
        time.sleep(delay)  # wait-ok: the random moment of the kill -9 during start-up
        process.kill()
        process.wait()
        ready, _, _ = select.select([read_end], [], [], 0)
        return bool(ready) and os.read(read_end, 4096).startswith(b"ready ")
    finally:
        os.close(read_end)


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(hive_env: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    print(f"kill -9 seed: {seed} (HIVE_FAULT_SEED={seed} replays it)")
    log = KillLog()
    home = hive_env
    db = home / "state.db"
    project = home / "proj"
    version = 0
    write_project(project, _project_yaml(version))
    began = time.monotonic()
    daemon = start_daemon(home)

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        with BlockingClient(daemon.socket, timeout=60) as client:
            return getattr(client, method)(*args, **kwargs)

    def services() -> dict[str, ServiceInfo]:
        """The first entry of each service (it carries desired and instances)."""
        view: dict[str, ServiceInfo] = {}
        for info in call("list_services"):
            view.setdefault(base_of(info)[0], info)
        return view

    def restart(what: str) -> dict[str, ServiceInfo]:
        """After a kill: the file as the crash left it, a new daemon, its settled view."""
        nonlocal daemon
        verdict = integrity(db)
        assert verdict == "ok", f"{what}: state.db after kill -9: {verdict} (seed {seed})"
        started = time.monotonic()
        daemon = start_daemon(home, timeout=60)
        infos, procs = settled_view(daemon.socket, home, what=f"{what} (seed {seed})")
        log.settles.append(time.monotonic() - started)
        stale = [(key, pid) for key, pids in procs.items() if key[0] == "k9:c"
                 for pid in pids if _env_of(pid).get("REL_V") != str(version)]
        assert not stale, f"{what}: k9:c runs an old configuration: {stale} (seed {seed})"
        view: dict[str, ServiceInfo] = {}
        for info in infos:
            view.setdefault(base_of(info)[0], info)
        return view

    try:
        # --- start-up: `hive up`, and the daemon's own start-up -----------------------
        for n in range(7):
            what = f"start-up kill {n + 1}"
            if n % 3 == 2:
                # The daemon's own start-up, with work to do: a service process died
                # while no daemon ran, so the booting daemon must start it again.
                daemon.kill9()
                log.setup_kills += 1
                running = sorted(running_instances(home).items())
                if running:
                    for pid in rng.choice(running)[1]:
                        os.kill(pid, signal.SIGKILL)
                delay = log.moment(rng, "daemon start-up")
                log.kills.append(("daemon start-up", delay, _boot_and_kill(home, delay)))
            else:
                first = n == 0

                def request(c: BlockingClient, first: bool = first) -> None:
                    if first:  # `hive up`: the source is added and started
                        c.add_source(project, name="k9", start=True)
                    else:
                        c.start_source("k9")

                if not first:
                    call("stop_source", "k9")
                log.kill(daemon, "hive up", "hive up", log.moment(rng, "hive up"), request)
            view = restart(what)
            if n == 0 and not view:
                # Killed before the source was registered: nothing happened, as it should
                # be for an add the daemon did not answer.
                assert not log.kills[-1][2], f"{what}: the add was answered, then lost (seed {seed})"
                call("add_source", project, name="k9")
                view = services()
            desired = {info.desired for info in view.values()}
            assert len(desired) == 1, f"{what}: a start half persisted: {desired} (seed {seed})"
            if log.kills[-1][2] and n % 3 != 2:
                assert desired == {"running"}, f"{what}: the start was answered, then lost (seed {seed})"
            if n == 0:
                call("start_source", "k9")
                call("scale_service", "k9:b", 2)
                call("scale_service", "k9:c", 3)
                settled_view(daemon.socket, home, what=what)

        # --- reload: services added, removed and changed --------------------------------
        call("start_source", "k9")
        for n in range(7):
            what = f"reload kill {n + 1}"
            before = services()
            version += 1
            write_project(project, _project_yaml(version))
            answered = log.kill(daemon, "reload", "reload", log.moment(rng, "reload"),
                                lambda c: c.reload_source("k9"))
            view = restart(what)
            assert set(view) == {"k9:a", "k9:b", "k9:c", f"k9:x{version % 2}"}, f"{what}: {sorted(view)}"
            for kept in ("k9:a", "k9:b", "k9:c"):  # never lost by a reload cut short
                assert view[kept].desired == "running", f"{what}: {kept} {view[kept].desired}"
                assert view[kept].instances == before[kept].instances, f"{what}: {kept} instances"
            if answered:
                added = view[f"k9:x{version % 2}"]
                assert added.desired == "running", f"{what}: the reload was answered, then lost (seed {seed})"

        # --- scale ------------------------------------------------------------------------
        for n in range(6):
            what = f"scale kill {n + 1}"
            fqn = rng.choice(["k9:b", "k9:c"])
            old = services()[fqn].instances
            new = rng.choice([count for count in range(5) if count != old])
            kind = "scale up" if new > old else "scale down"
            answered = log.kill(daemon, "scale", kind, log.moment(rng, kind),
                                lambda c: c.scale_service(fqn, new))  # noqa: B023
            now = restart(what)[fqn].instances
            assert now in (old, new), f"{what}: {fqn} scaled {old} -> {new}, now {now} (seed {seed})"
            if answered:
                assert now == new, f"{what}: {fqn} scale to {new} was answered, then lost (seed {seed})"
    finally:
        if daemon.alive():
            daemon.stop()
        left = kill_leftovers(home)
    verdict = integrity(db)
    assert verdict == "ok", verdict
    assert not left, f"services left running after the daemon stopped: {left}"
    elapsed = time.monotonic() - began
    print(f"{log.summary()}; {log.setup_kills} more kills to boot daemons with work; {elapsed:.1f} s")
    record("faults", "kill -9 during start-up, reload and scale", f"{len(log.kills)} kills (seed {seed})",
           f"no service lost, duplicated or stale, integrity ok after each; {log.summary()}")


# --- 2. a full disk under HIVE_HOME --------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``path`` (root only): skipped, with the reason, where
    mounting is not permitted, except under CI=true (a fresh VM where we are root)."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        problem = (done.stderr.strip() or f"mount exited {done.returncode}") if done.returncode else None
    except FileNotFoundError:
        problem = "there is no mount command"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but a tmpfs cannot be mounted as HIVE_HOME: {problem}")
        pytest.skip(f"cannot mount a small filesystem as HIVE_HOME (needs root): {problem}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


class Filler:
    """Keeps a filesystem full from a thread, as another program filling the disk would:
    whatever the daemon frees (log capture space it punches out) is taken again at once,
    so the daemon meets a full disk for as long as the filler runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.full = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)

    def __enter__(self) -> Filler:
        self._thread.start()
        assert self.full.wait(30), "the filesystem did not fill up"
        return self

    def _fill(self) -> None:
        chunk = b"\0" * 65536
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._stop.is_set():
                try:
                    os.write(fd, chunk if not self.full.is_set() else chunk[:4096])
                except OSError:
                    self.full.set()
                    self._stop.wait(0.02)  # wait-ok: the filler's pace while the disk is full
        finally:
            os.close(fd)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.path.unlink(missing_ok=True)


def _status(socket: Path) -> DaemonStatus:
    with BlockingClient(socket, timeout=30) as client:
        return client.status()


def _services(socket: Path) -> dict[str, ServiceInfo]:
    with BlockingClient(socket, timeout=30) as client:
        return {info.fqn: info for info in client.list_services()}


DISK_PROJECT = """
    version: "1"
    services:
      steady:
        runner: {type: script, script: {run: "sleep 3600"}}
      spare:
        runner: {type: script, script: {run: "sleep 3600"}}
      crasher:
        runner: {type: script, script: {run: "exit 3"}}
        restart: {policy: always, delay: 100ms, max_delay: 300ms, jitter: false}
      chatty:
        runner: {type: script, script: {run: 'i=0; while :; do i=$((i+1)); echo "chatty line $i"; sleep 0.01; done'}}
"""


def test_full_disk_under_hive_home(hive_env: Path, tmp_path: Path) -> None:
    home = hive_env
    with small_filesystem(home, "24m"):
        project = write_project(tmp_path / "proj", DISK_PROJECT)
        # The crasher must go on restarting throughout: no start limit.
        (home / "config.toml").write_text("[restart]\nstart_limit_burst = 0\n")
        daemon = start_daemon(home)
        try:
            with BlockingClient(daemon.socket, timeout=60) as client:
                client.add_source(project, name="disk", start=True)
            wait_for(lambda: all(s.state == "running" for f, s in _services(daemon.socket).items()
                                 if f != "disk:crasher"), timeout=30, what="the services to run")
            wait_for(lambda: _services(daemon.socket)["disk:crasher"].restart_count >= 2, timeout=30,
                     what="the crasher to restart")
            steady_pid = _services(daemon.socket)["disk:steady"].pid
            assert _status(daemon.socket).state_error is None

            filled = time.monotonic()
            crashes_at_fill = _services(daemon.socket)["disk:crasher"].restart_count
            with Filler(home / "filler") as filler:
                assert filler.full.is_set()
                # The crasher's restarts write its counter: the write fails, and says so.
                full = wait_for(functools.partial(_status_if, daemon.socket, lambda s: s.state_error),
                                timeout=30, what="the status to report the failing state writes")
                assert full is not None
                error = str(full.state_error)
                assert "full" in error.lower(), error
                shown = run_cli("status")
                assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
                assert "NOT SAVED" in shown.stdout and error in shown.stdout, shown.stdout
                # Supervision goes on: the crasher is restarted, the steady one keeps running.
                crashes = _services(daemon.socket)["disk:crasher"].restart_count
                wait_for(lambda: _services(daemon.socket)["disk:crasher"].restart_count >= crashes + 5,
                         timeout=30, what="the crasher to keep being restarted on a full disk")
                now = _services(daemon.socket)
                assert now["disk:steady"].state == "running" and now["disk:steady"].pid == steady_pid
                assert now["disk:chatty"].state == "running"
                # Changes made now take effect, and wait in memory to be written.
                with BlockingClient(daemon.socket, timeout=60) as client:
                    client.scale_service("disk:steady", 2)
                    client.stop_service("disk:spare")
                steady1 = wait_for(functools.partial(_running, daemon.socket, "disk:steady#1"),
                                   timeout=30, what="steady#1 to run")
                waiting = wait_for(functools.partial(_status_if, daemon.socket, lambda s: s.log_write_errors),
                                   timeout=30, what="the log files' write errors to be counted")
                assert waiting is not None and steady1 is not None
                assert waiting.state_error is not None and waiting.state_unsaved >= 2, waiting
                # A write that must not be half done is refused as a whole, in one line.
                more = write_project(tmp_path / "more", DISK_PROJECT)
                added = run_cli("source", "add", str(more), "--name", "more")
                assert added.returncode != 0 and "Traceback" not in added.stderr, added.stderr
                assert len(added.stderr.strip().splitlines()) == 1 and "disk is full" in added.stderr, added.stderr
                verdict = integrity(home / "state.db")
                assert verdict == "ok", f"state.db on a full disk: {verdict}"
                assert daemon.alive()
                restarts_when_full = _services(daemon.socket)["disk:crasher"].restart_count
            full_for = time.monotonic() - filled

            # Room again: the retry timer writes what waited, no one has to ask.
            freed = time.monotonic()
            wait_for(lambda: _status(daemon.socket).state_error is None, timeout=30,
                     what="the state to be saved again once the disk has room")
            recovered_in = time.monotonic() - freed
            wait_for(lambda: "state saved again" in daemon.stderr(), timeout=10,
                     what="the daemon's log to say the state is saved again")
            assert "Traceback" not in daemon.stderr(), daemon.stderr()[-3000:]
            after = _status(daemon.socket)
            assert "  state      saved" in run_cli("status").stdout
            mark = datetime.now(UTC)
            wait_for(lambda: _chatty_lines_since(daemon.socket, mark), timeout=30,
                     what="the chatty service's output to reach its log again")
            restarts_saved = _services(daemon.socket)["disk:crasher"].restart_count
            assert restarts_saved >= restarts_when_full
            # What was written is what a new daemon finds: killed, so nothing more is flushed.
            failures = after.state_failures
            log_errors = after.log_write_errors
            daemon.kill9()
            verdict = integrity(home / "state.db")
            assert verdict == "ok", verdict
            daemon = start_daemon(home)
            wait_for(functools.partial(_running, daemon.socket, "disk:steady#1"), timeout=30,
                     what="the new daemon to adopt the second steady instance")
            view = _services(daemon.socket)
            assert set(view) >= {"disk:steady", "disk:steady#1", "disk:spare", "disk:crasher", "disk:chatty"}
            assert view["disk:steady"].instances == 2 and view["disk:steady"].pid == steady_pid
            assert view["disk:steady#1"].pid == steady1.pid  # adopted, not started twice
            assert view["disk:spare"].desired == "stopped" and view["disk:spare"].state == "stopped"
            assert not running_instances(home).get(("disk:spare", 0))
            assert view["disk:crasher"].restart_count >= restarts_when_full
            with BlockingClient(daemon.socket, timeout=30) as client:
                assert "more" not in {source.name for source in client.list_sources()}
            assert daemon.stderr().count("Traceback") == 0
        finally:
            if daemon.alive():
                daemon.stop()
            left = kill_leftovers(home)
        assert not left, f"left running: {left}"
    restarted = restarts_when_full - crashes_at_fill
    print(f"full disk: {error}; crasher restarted {restarted} times while full; {failures} failed state "
          f"writes (retried by timer), {log_errors} failed log writes, state saved again "
          f"{recovered_in:.1f} s after space returned")
    record("faults", "full disk under HIVE_HOME (24 MiB tmpfs)", f"full for {full_for:.0f} s",
           f"supervision went on ({restarted} restarts), `hive status` showed NOT SAVED, saved "
           f"{recovered_in:.1f} s after space returned, changes made meanwhile kept; {failures} failed "
           f"state writes, {log_errors} failed log writes, integrity ok")


def _status_if(socket: Path, predicate: Callable[[DaemonStatus], object]) -> DaemonStatus | None:
    status = _status(socket)
    return status if predicate(status) else None


def _running(socket: Path, fqn: str) -> ServiceInfo | None:
    info = _services(socket).get(fqn)
    return info if info is not None and info.state == "running" else None


def _chatty_lines_since(socket: Path, mark: datetime) -> bool:
    with BlockingClient(socket, timeout=30) as client:
        lines = client.get_logs("disk:chatty", lines=50)
    return any(line.timestamp >= mark and "chatty line" in line.message for line in lines)


# --- 3. a damaged state.db -----------------------------------------------------------------


def _damage(kind: str, db: Path) -> None:
    data = bytearray(db.read_bytes())
    if kind == "garbage":  # not a database at all
        db.write_bytes(b"this is not SQLite" + os.urandom(8192))
    elif kind == "truncated":  # a copy taken mid-write
        db.write_bytes(bytes(data[: len(data) // 2 + 100]))
    else:  # pages overwritten in the middle: the header is fine, the b-trees are not
        page = 4096
        for number in range(1, len(data) // page):
            data[number * page + 8: number * page + 600] = os.urandom(592)
        db.write_bytes(bytes(data))


def _real_state(home: Path, project: Path) -> None:
    """A state.db with something in it: a source, a service, its desired state."""
    daemon = start_daemon(home)
    try:
        with BlockingClient(daemon.socket, timeout=60) as client:
            client.add_source(project, name="dmg", start=False)
            for n in range(40):  # enough rows for several pages
                client.scale_service("dmg:web", n % 7)
    finally:
        daemon.stop()
    for extra in ("state.db-wal", "state.db-shm"):
        (home / extra).unlink(missing_ok=True)


def test_damaged_state_db_refuses_to_start_with_the_way_out(hive_env: Path, tmp_path: Path) -> None:
    home = hive_env
    db = home / "state.db"
    project = write_project(tmp_path / "proj", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "sleep 3600"}}
        """)
    tried = []
    for kind in ("garbage", "truncated", "pages"):
        _real_state(home, project)
        _damage(kind, db)
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        files_before = sorted(p.name for p in home.iterdir() if p.name.startswith("state.db"))

        with pytest.raises(StartFailed) as failure:
            start_daemon(home)
        message = str(failure.value)
        _check_refusal(message, db, kind)

        cli = run_cli("start", env={"HIVE_HOME": str(home)})
        assert cli.returncode != 0, f"{kind}: hive start started on a damaged state.db"
        assert cli.stdout == "", cli.stdout
        lines = cli.stderr.strip().splitlines()
        assert "Traceback" not in cli.stderr and len(lines) == 1, f"{kind}: {cli.stderr}"
        _check_refusal(lines[0], db, kind)
        assert lines[0].startswith("hive: error: "), lines[0]

        # Nothing lost: the damaged file is as it was, for the user to recover from.
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before, f"{kind}: the damaged file changed"
        assert sorted(p.name for p in home.iterdir() if p.name.startswith("state.db")) == files_before
        assert not (home / "hive.sock").exists()
        tried.append(kind)
        db.unlink()
    record("faults", "damaged state.db (garbage, truncated, pages overwritten)",
           f"{len(tried)} damages x (daemon, `hive start`)",
           "refused with one line naming the file and docs/recovery.md, `hive backup restore`; file untouched")


def _check_refusal(message: str, db: Path, kind: str) -> None:
    assert "\n" not in message.strip(), f"{kind}: more than one line: {message!r}"
    assert str(db) in message, f"{kind}: the file is not named: {message}"
    assert "damaged" in message, f"{kind}: {message}"
    assert "docs/recovery.md" in message and "hive backup restore" in message, f"{kind}: {message}"
    assert "Traceback" not in message


# --- 4. the container engine restarted under running containers ---------------------------


class PrivateDockerd:
    """A dockerd of this test's own, started as scripts/ci-engines.sh starts the shared one
    (``dockerd --iptables=false --bridge=none``) but on its own socket, data and exec
    roots: killing and restarting it disturbs no other test using the shared engine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "d.sock"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", f"unix://{self.socket}", *args], stdin=stdin,
                              capture_output=True, text=True, timeout=120)

    def start(self, *, live_restore: bool = False) -> float:
        """Start it and wait until it answers; how long that took. With ``live_restore``
        it keeps the containers it finds running (else it kills them as it starts)."""
        began = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--iptables=false", "--bridge=none", "--host", f"unix://{self.socket}",
                 "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "x"),
                 "--pidfile", str(self.root / "d.pid"), *(["--live-restore"] if live_restore else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        wait_for(lambda: self.docker("version").returncode == 0, timeout=60, what="dockerd to answer")
        return time.monotonic() - began

    def _containerd(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children()
        except psutil.Error:
            return []

    def kill9(self) -> None:
        """What a crash does: SIGKILL (its containerd goes with it; the containers'
        shims stay). The next start must find neither it nor its containerd alive."""
        assert self.process is not None
        helpers = self._containerd()
        self.process.kill()
        self.process.wait()
        for helper in helpers:
            wait_for(functools.partial(_gone, helper), timeout=30, what="containerd to end")

    def close(self) -> None:
        """Remove every container, stop the engine, unmount and remove what it made."""
        if self.process is not None and self.process.poll() is not None:
            # Killed by a test that then failed: started again, it ends the containers
            # left to their shims (no live-restore), and can remove them.
            with contextlib.suppress(AssertionError, OSError):
                self.start()
        if self.process is not None and self.process.poll() is None:
            listed = self.docker("ps", "-aq").stdout.split()
            if listed:
                self.docker("rm", "-f", "-v", *listed)
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for process in psutil.process_iter(["pid", "cmdline"]):  # shims left by a failure
            if str(self.root) in " ".join(process.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    process.kill()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)


def _gone(process: psutil.Process) -> bool:
    """Reaped, not only dead: dockerd takes a zombie for a live containerd."""
    try:
        process.status()
    except psutil.NoSuchProcess:
        return True
    return False


ENGINE_PROJECT = """
    version: "1"
    services:
      web:
        runner:
          type: docker
          docker:
            image: {image}
            network_mode: host
            command: ["sh", "-c", "trap 'exit 0' TERM; while :; do echo web tick; sleep 1 & wait $!; done"]
        restart: {{policy: always, delay: 200ms}}
      worker:
        runner:
          type: docker
          docker:
            image: {image}
            network_mode: host
            command: ["sh", "-c", "trap 'exit 0' TERM; while :; do echo worker tick; sleep 1 & wait $!; done"]
        restart: {{policy: on-failure, delay: 200ms}}
"""


def _containers(engine: PrivateDockerd, fqn: str, *, running_only: bool) -> list[str]:
    args = ["ps", "--no-trunc", "-q", "--filter", f"label=hive.fqn={fqn}"]
    listed = engine.docker(*args if running_only else [*args, "-a"])
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def test_docker_engine_restarted_under_running_containers(hive_env: Path, tmp_path: Path) -> None:
    """dockerd killed with SIGKILL and started again, twice: as started by default its
    return kills the containers (Hive replaces them); with --live-restore they survive
    (Hive follows the same containers again). Either way: one running container per
    service, no user action."""
    from tests.engines import IMAGE, require_engine

    require_engine("docker")
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        problem = "needs root and dockerd to run an engine of its own"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the test {problem}")
        pytest.skip(f"the engine-restart test {problem}")
    home = hive_env
    fqns = ("eng:web", "eng:worker")
    engine = PrivateDockerd(Path(tempfile.mkdtemp(prefix="hvd-", dir="/tmp")))
    hive: DaemonProcess | None = None
    figures: list[str] = []
    try:
        engine.start()
        with subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE) as saved:
            loaded = engine.docker("load", stdin=saved.stdout)
        assert loaded.returncode == 0, loaded.stderr
        (home / "config.toml").write_text(f'[runners.docker]\nsocket = "{engine.socket}"\n')
        project = write_project(tmp_path / "proj", ENGINE_PROJECT.format(image=IMAGE))
        daemon = hive = start_daemon(home)
        up = run_cli("up", str(project), "--name", "eng")
        assert up.returncode == 0, up.stdout + up.stderr

        for live_restore in (False, True):
            before = _services(daemon.socket)
            assert all(before[f].state == "running" and before[f].container_id for f in fqns), before
            noticed = {f: _log_text(daemon, f).count("lost the Docker engine") for f in fqns}
            engine.kill9()
            down_at = time.monotonic()
            # Hive notices: each service's log says the engine went away.
            wait_for(functools.partial(_noticed, daemon, noticed, "lost the Docker engine"), timeout=30,
                     what="Hive to notice the engine went away")
            assert _status(daemon.socket).running  # and it keeps serving meanwhile
            engine.start(live_restore=live_restore)
            back_at = time.monotonic()

            def settled(before: dict[str, ServiceInfo] = before, same: bool = live_restore,
                        noticed: dict[str, int] = noticed, daemon: DaemonProcess = daemon) -> bool:
                now = _services(daemon.socket)
                return all(now[f].state == "running" and bool(now[f].container_id) and
                           (now[f].container_id == before[f].container_id) == same and
                           _log_text(daemon, f).count("Docker engine is back") > noticed[f] for f in fqns)

            wait_for(settled, timeout=90, what="the services to run after the engine restart")
            after = _services(daemon.socket)
            settled_in = time.monotonic() - back_at
            for fqn in fqns:
                running = _containers(engine, fqn, running_only=True)
                assert running == [after[fqn].container_id], f"{fqn}: running containers {running}"
                # A container killed by the engine's return was replaced, not left behind.
                assert _containers(engine, fqn, running_only=False) == running, fqn
                text = _log_text(daemon, fqn)
                if live_restore:
                    assert "the container still runs" in text, text[-2000:]
                    assert after[fqn].restart_count == before[fqn].restart_count
                else:
                    assert "ended while the Docker engine was away" in text, text[-2000:]
                    assert after[fqn].restart_count == before[fqn].restart_count + 1
            # The output is followed again (the old follower died with the engine).
            mark = datetime.now(UTC)
            for fqn, word in (("eng:web", "web tick"), ("eng:worker", "worker tick")):
                wait_for(functools.partial(_output_since, daemon, fqn, word, mark), timeout=30,
                         what=f"new output of {fqn} in its log")
            mode = "with --live-restore: same containers" if live_restore else "default: containers replaced"
            figures.append(f"{mode}, running {settled_in:.1f} s after the engine answered "
                           f"(down {back_at - down_at:.1f} s)")

        # A stop asked while the engine is away cannot be sent: the answer says so at once
        # (no hanging CLI), and the stop is carried out, the container removed, when the
        # engine is back (live-restore kept it running).
        noticed = {f: _log_text(daemon, f).count("lost the Docker engine") for f in fqns}
        kept = _services(daemon.socket)["eng:web"].container_id
        engine.kill9()
        wait_for(functools.partial(_noticed, daemon, noticed, "lost the Docker engine"), timeout=30,
                 what="Hive to notice the engine went away")
        stopping = run_cli("service", "stop", "eng:worker")
        said = stopping.stdout + stopping.stderr
        assert stopping.returncode != 0 and "Traceback" not in said, said
        assert "not stopped yet: eng:worker: cannot reach the Docker engine" in said, said
        assert "the container is stopped when the engine answers again" in said, said
        assert _services(daemon.socket)["eng:worker"].state == "stopping"
        engine.start(live_restore=True)
        wait_for(lambda: _services(daemon.socket)["eng:worker"].state == "stopped", timeout=30,
                 what="eng:worker to be stopped")
        assert _containers(engine, "eng:worker", running_only=False) == []
        assert _containers(engine, "eng:web", running_only=True) == [kept]
        figures.append("a stop asked while it was away answered at once (not stopped yet), done when it came back")

        # A start asked while such a stop waits: it starts again once that stop is over.
        started = run_cli("service", "start", "eng:worker")
        assert started.returncode == 0, started.stdout + started.stderr
        first = _services(daemon.socket)["eng:worker"].container_id
        noticed = {"eng:worker": _log_text(daemon, "eng:worker").count("lost the Docker engine")}
        engine.kill9()
        wait_for(functools.partial(_noticed, daemon, noticed, "lost the Docker engine"), timeout=30,
                 what="Hive to notice the engine went away")
        assert run_cli("service", "stop", "eng:worker").returncode != 0  # not stopped yet
        again = run_cli("service", "start", "eng:worker")
        said = again.stdout + again.stderr
        assert again.returncode != 0 and "Traceback" not in said, said
        assert "eng:worker: still stopping" in said and "it starts again once stopped" in said, said
        again = run_cli("service", "restart", "eng:worker")  # the same, through a restart
        said = again.stdout + again.stderr
        assert again.returncode != 0 and "Traceback" not in said, said
        assert "not restarted yet: eng:worker: still stopping (cannot reach the Docker engine" in said, said
        assert said.rstrip().endswith("it starts again once stopped [CONFLICT]"), said
        engine.start(live_restore=True)

        def restarted() -> bool:
            now = _services(daemon.socket)["eng:worker"]
            return now.state == "running" and bool(now.container_id) and now.container_id != first

        wait_for(restarted, timeout=60, what="eng:worker to run again after its stop")
        assert _containers(engine, "eng:worker", running_only=False) == [
            _services(daemon.socket)["eng:worker"].container_id]  # the first one removed
        figures.append("a start and a restart asked meanwhile done after that stop")

        # The daemon stopped while the engine is away does not wait for the engine: the
        # container it cannot stop keeps its record, and the next daemon takes it over.
        noticed = {"eng:web": _log_text(daemon, "eng:web").count("lost the Docker engine")}
        engine.kill9()
        wait_for(functools.partial(_noticed, daemon, noticed, "lost the Docker engine"), timeout=30,
                 what="Hive to notice the engine went away")
        assert "Traceback" not in daemon.stderr()
        asked = time.monotonic()
        assert daemon.stop() == 0
        stopped_in = time.monotonic() - asked
        said = daemon.stderr()
        assert "not stopped: eng:web: cannot reach the Docker engine" in said, said[-2000:]
        engine.start(live_restore=True)
        daemon = hive = start_daemon(home)
        wait_for(lambda: _services(daemon.socket)["eng:web"].container_id == kept
                 and _services(daemon.socket)["eng:web"].state == "running", timeout=60,
                 what="the next daemon to adopt eng:web's container")
        figures.append(f"the daemon stopped in {stopped_in:.1f} s with the engine away; "
                       "the next one adopted the container left")

        assert "Traceback" not in daemon.stderr()
        assert daemon.stop() == 0
        assert all(not _containers(engine, f, running_only=False) for f in fqns), "containers left behind"
    finally:
        if hive is not None and hive.alive():
            hive.stop()
        engine.close()
        shutil.rmtree(engine.root, ignore_errors=True)
    print("dockerd restarts: " + "; ".join(figures))
    record("faults", "dockerd killed (-9) and restarted under 2 running containers",
           "5 engine restarts", "; ".join(figures) + "; 1 running container per service, none left "
           "(podman: daemonless, no engine to restart)")


def _private_engine_or_skip() -> None:
    from tests.engines import require_engine

    require_engine("docker")
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        problem = "needs root and dockerd to run an engine of its own"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the test {problem}")
        pytest.skip(f"the engine-restart test {problem}")


def test_docker_engine_restarted_gracefully_under_running_containers(hive_env: Path, tmp_path: Path) -> None:
    """``systemctl restart docker``: SIGTERM to dockerd stops every container (each traps
    TERM and exits 0, as the docs recommend), then the engine. Hive counts that as a
    failure, so the ``on-failure`` service comes back too; no restart is tried while the
    engine is away, so each service is restarted once, when it answers again."""
    from tests.engines import IMAGE

    _private_engine_or_skip()
    home = hive_env
    fqns = ("eng:web", "eng:worker")
    engine = PrivateDockerd(Path(tempfile.mkdtemp(prefix="hvd-", dir="/tmp")))
    hive: DaemonProcess | None = None
    try:
        engine.start()
        with subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE) as saved:
            loaded = engine.docker("load", stdin=saved.stdout)
        assert loaded.returncode == 0, loaded.stderr
        (home / "config.toml").write_text(f'[runners.docker]\nsocket = "{engine.socket}"\n')
        project = write_project(tmp_path / "proj", ENGINE_PROJECT.format(image=IMAGE))
        daemon = hive = start_daemon(home)
        up = run_cli("up", str(project), "--name", "eng")
        assert up.returncode == 0, up.stdout + up.stderr
        before = _services(daemon.socket)
        assert all(before[f].state == "running" and before[f].container_id for f in fqns), before
        noticed = {f: _log_text(daemon, f).count("lost the Docker engine") for f in fqns}

        assert engine.process is not None
        engine.process.terminate()  # what `systemctl stop docker` sends
        engine.process.wait(120)
        wait_for(functools.partial(_noticed, daemon, noticed, "lost the Docker engine"), timeout=30,
                 what="Hive to notice the engine went away")
        away = _services(daemon.socket)
        for fqn in fqns:  # nothing tried, nothing counted, while the engine is away
            assert away[fqn].restart_count == before[fqn].restart_count, (fqn, away[fqn])
        engine.start()
        back_at = time.monotonic()

        def running_again() -> bool:
            now = _services(daemon.socket)
            return all(now[f].state == "running" and bool(now[f].container_id)
                       and now[f].container_id != before[f].container_id for f in fqns)

        wait_for(running_again, timeout=90, what="both services to run after the engine's restart")
        settled_in = time.monotonic() - back_at
        after = _services(daemon.socket)
        for fqn in fqns:
            assert after[fqn].restart_count == before[fqn].restart_count + 1, (fqn, after[fqn])
            assert _containers(engine, fqn, running_only=False) == [after[fqn].container_id], fqn
            text = _log_text(daemon, fqn)
            assert "stopped by the Docker engine's shutdown (exit code 0)" in text, text[-2000:]
        assert "Traceback" not in daemon.stderr()
        assert daemon.stop() == 0
    finally:
        if hive is not None and hive.alive():
            hive.stop()
        engine.close()
        shutil.rmtree(engine.root, ignore_errors=True)
    print(f"graceful dockerd restart: both services running {settled_in:.1f} s after the engine answered")
    record("faults", "dockerd stopped gracefully (SIGTERM) and started again under 2 running containers",
           "1 engine restart", f"on-failure and always services restarted once each, "
           f"{settled_in:.1f} s after the engine answered")


def _output_since(daemon: DaemonProcess, fqn: str, word: str, mark: datetime) -> bool:
    return any(line.timestamp >= mark and word in line.message for line in _logs(daemon, fqn))


def _noticed(daemon: DaemonProcess, before: dict[str, int], text: str) -> bool:
    """Each service's log has more lines with ``text`` than ``before`` counted."""
    return all(_log_text(daemon, fqn).count(text) > count for fqn, count in before.items())


def _logs(daemon: DaemonProcess, fqn: str) -> list[Any]:
    with BlockingClient(daemon.socket, timeout=30) as client:
        return client.get_logs(fqn, lines=500)


def _log_text(daemon: DaemonProcess, fqn: str) -> str:
    return "\n".join(line.message for line in _logs(daemon, fqn))


# --- 5. a core plugin failing in a loop ---------------------------------------------------

PLUGIN_CYCLES = 300


def _daemon_figures(daemon: DaemonProcess) -> tuple[float, int, int]:
    """RSS in MiB, open descriptors, threads."""
    process = psutil.Process(daemon.pid)
    return process.memory_info().rss / 2**20, process.num_fds(), process.num_threads()


@pytest.mark.anyio
async def test_plugin_failing_in_a_loop_is_contained_without_leaks(hive_env: Path, tmp_path: Path) -> None:
    """The raiser plugin fails on every event; brought back (restart, enable, the CLI) and
    tripped again PLUGIN_CYCLES times while a service crashes in a loop beside it. The
    circuit breaker holds each time, the recorder gets every event, the daemon supervises
    and answers throughout, and its memory, descriptors and connections stay flat."""
    from tests.plugins.conftest import PACKAGE, recorder_table, records
    from tests.support import install_package

    install_package(PACKAGE, "hive_test_plugins")
    from hive.plugin import FAILURE_LIMIT

    home = hive_env
    recorded = home / "rec.jsonl"
    # The crasher restarts throughout (no start limit).
    (home / "config.toml").write_text(recorder_table(recorded) + "[plugins.raiser]\n"
                                      "[restart]\nstart_limit_burst = 0\n")
    project = write_project(tmp_path / "proj", """
        version: "1"
        services:
          steady:
            runner: {type: script, script: {run: "sleep 3600"}}
          crasher:
            runner: {type: script, script: {run: "exit 3"}}
            restart: {policy: always, delay: 50ms, max_delay: 200ms, jitter: false}
        """)
    daemon = start_daemon(home)
    emitted = 0
    began = time.monotonic()
    try:
        async with DaemonClient(daemon.socket, timeout=60) as client:
            await client.add_source(project, name="plug", start=True)
            steady = await client.get_service_status("plug:steady")
            crashes_before = (await client.get_service_status("plug:crasher")).restart_count
            async with client.subscribe_events(kinds=["plugin_state_changed"], since_seq=0) as changes:

                async def raiser_failed() -> None:
                    with anyio.fail_after(30):
                        async for change in changes:
                            if (isinstance(change, PluginStateChanged) and change.plugin == "raiser"
                                    and change.state == "failed"):
                                return
                    raise AssertionError("the event stream ended")

                await raiser_failed()  # tripped by the events of the start already
                baseline: tuple[float, int, int] | None = None
                clients_failed: int | None = None
                for cycle in range(PLUGIN_CYCLES):
                    info = (await client.list_plugins())
                    raiser = next(p for p in info if p.name == "raiser")
                    assert raiser.state == "failed" and raiser.failed >= FAILURE_LIMIT, raiser
                    assert "raiser cannot take" in (raiser.last_error or "")
                    if cycle == 20:  # warmed up: what the daemon holds with the raiser failed
                        baseline = _daemon_figures(daemon)
                        clients_failed = (await client.status()).clients
                    # Bring it back, each way a user has.
                    if cycle % 25 == 24:  # as a user would: see it failed, bring it back
                        shown = run_cli("plugins")
                        assert shown.returncode == 0 and "failed" in shown.stdout, shown.stdout
                        action = "enable" if cycle % 50 == 24 else "restart"
                        done = run_cli("plugins", action, "raiser")
                        assert done.returncode == 0, done.stderr
                        assert done.stdout.strip() == "raiser: running", done.stdout
                    elif cycle % 2:
                        assert (await client.enable_plugin("raiser")).state == "running"
                    else:
                        back = await client.restart_plugin("raiser")
                        assert back.state == "running" and back.failed == 0
                    # Events it fails on; the recorder must get each of them too.
                    for n in range(FAILURE_LIMIT):
                        await client.emit_event("fault_test", f"cycle {cycle} event {n}")
                        emitted += 1
                    await raiser_failed()
                    assert (await client.status()).running
                assert baseline is not None and clients_failed is not None
                end = _daemon_figures(daemon)
                clients_end = (await client.status()).clients
            plugins = {p.name: p for p in await client.list_plugins()}
            assert plugins["recorder"].state == "running", plugins["recorder"]
            assert plugins["recorder"].failed == 0 and plugins["recorder"].dropped == 0
            # Supervision went on beside it.
            assert (await client.get_service_status("plug:steady")).pid == steady.pid
            crashes = (await client.get_service_status("plug:crasher")).restart_count - crashes_before
            assert crashes >= 10, f"the crasher was restarted {crashes} times only"
        await wait_until(lambda: sum(1 for r in records(recorded) if r.get("kind") == "plugin_notice") >= emitted,
                         timeout=30, what="the recorder to get every notice")
        got = sum(1 for r in records(recorded) if r.get("kind") == "plugin_notice")
        assert got == emitted, f"the recorder got {got} of {emitted} notices"
        assert "Traceback" not in run_cli("plugins").stderr
    finally:
        daemon.stop()
        kill_leftovers(home)
    elapsed = time.monotonic() - began
    rss_growth = end[0] - baseline[0]
    print(f"plugin loop: {PLUGIN_CYCLES} trip/restore cycles in {elapsed:.1f} s; RSS {baseline[0]:.1f} -> "
          f"{end[0]:.1f} MiB, fds {baseline[1]} -> {end[1]}, threads {baseline[2]} -> {end[2]}, "
          f"clients {clients_failed} -> {clients_end}; crasher restarted {crashes} times meanwhile")
    # Bounds: a leaked subscription (a queue of 1,000 events) or connection per cycle
    # would grow the daemon by far more than this over 280 cycles.
    assert rss_growth < 8, f"RSS grew {rss_growth:.1f} MiB over {PLUGIN_CYCLES - 20} cycles"
    assert end[1] - baseline[1] <= 4, f"descriptors {baseline[1]} -> {end[1]}"
    assert end[2] - baseline[2] <= 2, f"threads {baseline[2]} -> {end[2]}"
    assert clients_end == clients_failed, f"connections {clients_failed} -> {clients_end}"
    record("faults", "core plugin failing in a loop (raiser)", f"{PLUGIN_CYCLES} trip/restore cycles",
           f"breaker opened each time; recorder got {emitted}/{emitted} events; RSS {baseline[0]:.0f} -> "
           f"{end[0]:.0f} MiB, fds {baseline[1]} -> {end[1]}, connections {clients_failed} -> {clients_end}")
