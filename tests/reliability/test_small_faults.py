"""Smaller faults: each one a bad day brings, against a real daemon on its real socket.

A shutdown that outlives ``daemon.shutdown_timeout``, a ``state.db`` deleted under the
daemon, a huge hive.yaml, a non-UTF-8 project path, rotated logs, a clock that steps
back, escape sequences in service output, and backups.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.reliability.report import record
from tests.support import run_cli, start_daemon, wait_for, write_project

# Ignores SIGTERM: only SIGKILL (after stop_grace) ends it.
STUBBORN = ("exec python3 -c \"import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring TERM', flush=True)\n"
            "while True: time.sleep(1)\"")


def _pids(home: Path, fqn: str) -> list[int]:
    """The processes of ``fqn`` started by the daemon of ``home`` (not another test's)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
            if (env.get("HIVE_SERVICE_FQN") == fqn and env.get("HIVE_HOME") == str(home)
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_shutdown_timeout_holds_and_what_still_runs_is_adopted(hive_env: Path) -> None:
    """A service that ignores SIGTERM with a long stop_grace: the daemon stops within
    daemon.shutdown_timeout (not after the grace), says what it left running, and the
    next daemon adopts it."""
    (hive_env / "config.toml").write_text("[daemon]\nshutdown_timeout = 1.0\n")
    project = write_project(hive_env / "proj", f"""
        version: "1"
        services:
          stubborn:
            runner: {{type: script, script: {{run: {json.dumps(STUBBORN)}}}}}
            stop_grace: 600s
        """)
    try:
        _stop_past_the_deadline(hive_env, project)
    finally:
        for pid in _pids(hive_env, "proj:stubborn"):
            os.kill(pid, signal.SIGKILL)
    record("faults", "shutdown slower than daemon.shutdown_timeout", "1 s timeout, 600 s grace",
           "daemon exits at the deadline; the service is adopted", "nothing")


def _stop_past_the_deadline(home: Path, project: Path) -> None:
    daemon = start_daemon(home)
    try:
        assert run_cli("up", str(project)).returncode == 0
        wait_for(lambda: "ignoring TERM" in run_cli("logs", "proj:stubborn").stdout, timeout=30,
                 what="the service to ignore SIGTERM")
        pids = _pids(home, "proj:stubborn")
        assert pids
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=60)  # far less than the 600 s grace: the deadline held
        stderr = daemon.stderr()
        assert "left running for the next daemon to adopt: proj:stubborn" in stderr
        assert _pids(home, "proj:stubborn") == pids
    finally:
        if daemon.alive():
            daemon.kill9()
    again = start_daemon(home)
    try:
        listed = run_cli("services", "--json")
        stubborn = next(s for s in json.loads(listed.stdout) if s["fqn"] == "proj:stubborn")
        assert stubborn["state"] == "running"
        assert _pids(home, "proj:stubborn") == pids
    finally:
        again.kill9()


QUIET = "exec sleep 3600"


def _quiet_project(home: Path) -> Path:
    return write_project(home / "proj", f"""
        version: "1"
        services:
          quiet:
            runner: {{type: script, script: {{run: {json.dumps(QUIET)}}}}}
        """)


def _service_state(fqn: str) -> str:
    listed = json.loads(run_cli("services", "--json").stdout)
    return str(next(s["state"] for s in listed if s["fqn"] == fqn))


def _kill_all(home: Path, fqn: str) -> None:
    for pid in _pids(home, fqn):
        os.kill(pid, signal.SIGKILL)


def test_state_db_deleted_while_running_is_recreated_in_full(hive_env: Path) -> None:
    """``rm state.db`` under a running daemon: status says so, the file is recreated from
    the daemon's open copy, and what was written before and after survives a restart."""
    project = _quiet_project(hive_env)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        (hive_env / "state.db").unlink()
        status = run_cli("status")
        assert status.returncode == 0, status.stderr
        assert "state.db was deleted" in status.stdout and "recreated" in status.stdout
        assert (hive_env / "state.db").exists()
        # Written after the deletion: must land in the new file too.
        assert run_cli("service", "stop", "proj:quiet").returncode == 0
    finally:
        daemon.kill9()
    again = start_daemon(hive_env)
    try:
        sources = run_cli("source", "list", "--json")
        assert "proj" in sources.stdout
        assert _service_state("proj:quiet") == "stopped"  # the stop was saved, not lost
    finally:
        again.stop()
        _kill_all(hive_env, "proj:quiet")
    record("faults", "state.db deleted while the daemon runs", "rm state.db",
           "status tells; the file is recreated in full", "nothing")


def test_state_db_replaced_while_running_is_kept_aside(hive_env: Path) -> None:
    """Another file moved onto state.db: the daemon's state goes back at the path (found
    by a write, without a status), the other file is kept beside it."""
    project = _quiet_project(hive_env)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("source", "add", str(project)).returncode == 0
        other = hive_env / "other.db"
        other.write_bytes(b"not the daemon's")
        other.replace(hive_env / "state.db")
        assert run_cli("service", "start", "proj:quiet").returncode == 0
        assert next(iter(hive_env.glob("state.db.replaced-*"))).read_bytes() == b"not the daemon's"
    finally:
        daemon.kill9()
    again = start_daemon(hive_env)
    try:
        assert _service_state("proj:quiet") == "running"
        assert "recreated" not in run_cli("status").stdout
    finally:
        again.stop()
        _kill_all(hive_env, "proj:quiet")


def test_rotated_log_files_stay_owner_only(hive_env: Path, tmp_path: Path) -> None:
    """Service log files rotated by size, and the daemon's own log rotated: every file
    is 0600, like the first one."""
    (hive_env / "config.toml").write_text("[logs]\nmax_file_bytes = 4096\nkeep_files = 3\n")
    project = write_project(hive_env / "proj", """
        version: "1"
        services:
          talker:
            runner: {type: script, script: {run: "while true; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; sleep 0.01; done"}}
        """)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        logs = hive_env / "logs"
        wait_for(lambda: any(p.name.endswith(".log.2") for p in logs.rglob("*")), timeout=60,
                 what="the service's log to rotate twice")
        files = [p for p in logs.rglob("*") if p.is_file()]
        assert files
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}, files
    finally:
        daemon.stop()
        _kill_all(hive_env, "proj:talker")
    # The daemon's own log (daemon.log when it runs detached), rotated in-process.
    import logging

    from hive.daemon.logsetup import RotatingFile

    umask = os.umask(0o022)  # the usual one: it made the daemon's log 0644
    handler = RotatingFile(tmp_path / "daemon.log", max_bytes=100, keep=2)
    try:
        for n in range(20):
            handler.emit(logging.LogRecord("hive", logging.INFO, __file__, 1, "line %d" * 5, (n,) * 5, None))
    finally:
        handler.close()
        os.umask(umask)
    rotated = sorted(tmp_path.glob("daemon.log*"))
    assert len(rotated) == 3
    assert {oct(p.stat().st_mode & 0o777) for p in rotated} == {"0o600"}
    record("faults", "rotated log files", "service and daemon logs rotated", "all 0600", "nothing")


def test_a_non_utf8_project_path_gets_one_line(daemon: object, hive_env: Path) -> None:
    """``hive up`` of a directory whose name is not UTF-8: one line saying so, no
    traceback, and the daemon serves on."""
    import subprocess
    import sys

    bad = os.path.join(os.fsencode(hive_env), b"caf\xe9")
    os.mkdir(bad)
    with open(os.path.join(bad, b"hive.yaml"), "w") as file:
        file.write('version: "1"\nservices:\n  a:\n    runner: {type: script, script: {run: "sleep 60"}}\n')
    for argv in ([b"up", bad], [b"source", b"add", bad], [b"logs", b"caf\xe9:a"]):
        result = subprocess.run([sys.executable.encode(), b"-m", b"hive", *argv],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
        assert "caf\\xe9" in result.stderr and "not valid UTF-8" in result.stderr
        assert "Traceback" not in result.stderr
    assert run_cli("status").returncode == 0


def test_a_huge_hive_yaml_is_refused_with_the_limit(daemon: object, hive_env: Path) -> None:
    """A 64 MiB hive.yaml: refused at once with the limit named, without reading it all;
    the daemon serves on."""
    project = write_project(hive_env / "big", 'version: "1"\nservices: {}\n')
    with open(project / "hive.yaml", "a") as file:
        line = "# " + "x" * 1021 + "\n"
        for _ in range(64 * 1024):
            file.write(line)
    result = run_cli("up", str(project))
    assert result.returncode != 0
    assert "larger than 8 MiB" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert run_cli("status").returncode == 0
    record("bad input", "hive.yaml of 64 MiB", "hive up", "refused: over the 8 MiB limit", "nothing")


@pytest.mark.parametrize("recorded_ahead", [7200, -7200])
def test_uptime_never_goes_negative_when_the_clock_steps_back(hive_env: Path, recorded_ahead: int) -> None:
    """An adopted process's uptime counts from its recorded start, then on the daemon's
    monotonic clock. Recorded two hours "in the future" (the wall clock stepped back
    since): uptime starts at 0, never negative. Recorded two hours ago: 2 h."""
    import sqlite3
    import time

    project = _quiet_project(hive_env)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
    finally:
        daemon.kill9()
    with sqlite3.connect(hive_env / "state.db") as db:
        changed = db.execute("UPDATE processes SET started_at = ?", (time.time() + recorded_ahead,)).rowcount
    assert changed == 1
    again = start_daemon(hive_env)
    try:
        wait_for(lambda: _service_state("proj:quiet") == "running", timeout=30, what="the adoption")
        uptime = json.loads(run_cli("services", "--json").stdout)[0]["uptime_secs"]
        shown = run_cli("services").stdout + run_cli("service", "status", "proj:quiet").stdout
        if recorded_ahead > 0:
            assert 0 <= uptime < 600
            assert "-" not in shown.split("uptime")[-1], shown
        else:
            assert 7200 <= uptime < 7800
            assert shown.count("2h 0") == 2, shown
    finally:
        again.stop()
        _kill_all(hive_env, "proj:quiet")
    record("faults", "wall clock stepped back 2 h", "adopted process recorded in the future",
           "uptime from the monotonic clock, never negative", "nothing")


SPOOF = "\x1b]0;pwned\x07\x1b[2K\rother:svc | forged\x9b"


def _logs_on_a_terminal(*args: str) -> str:
    """``hive logs ARGS`` with its stdout on a pseudo-terminal: what the terminal got."""
    import subprocess
    import sys

    primary, secondary = os.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200"}
    with subprocess.Popen([sys.executable, "-m", "hive", "logs", *args], stdout=secondary,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env) as process:
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    os.close(primary)
    return b"".join(chunks).decode(errors="replace")


def test_control_sequences_in_output_are_neutralised_on_a_terminal(daemon: object, hive_env: Path) -> None:
    """A service writing escape sequences (a title change, erase line, carriage return):
    on a terminal ``hive logs`` shows them escaped, ``--raw`` passes them, a pipe gets
    them as written."""
    script = "printf '\\033]0;pwned\\007\\033[2K\\rother:svc | forged\\302\\233\\n'; exec sleep 3600"
    project = write_project(hive_env / "esc", f"""
        version: "1"
        services:
          svc:
            runner: {{type: script, script: {{run: {json.dumps(script)}}}}}
        """)
    try:
        assert run_cli("up", str(project)).returncode == 0
        wait_for(lambda: "forged" in run_cli("logs", "esc:svc").stdout, timeout=30, what="the line")
        shown = _logs_on_a_terminal("esc:svc")
        assert "\\x1b]0;pwned\\x07\\x1b[2K\\x0dother:svc | forged\\x9b" in shown, repr(shown)
        assert "\x1b]0;pwned" not in shown and "\r" not in shown.replace("\r\n", "\n")
        assert "\x1b]0;pwned\x07" in _logs_on_a_terminal("--raw", "esc:svc")
        assert SPOOF.replace("\r", "\n") in run_cli("logs", "esc:svc").stdout  # (text mode reads CR as a newline)
    finally:
        run_cli("down", str(project))
        _kill_all(hive_env, "esc:svc")
    record("faults", "escape sequences in service output", "title change, erase line, CR",
           "shown escaped on a terminal; --raw and pipes unchanged", "nothing")


# Each run of the check backgrounds a process that leaves its group and session (setsid)
# and writes its pid to esc.<the check's pid> once out; the check passes after that.
ESCAPING_CHECK = ("setsid sh -c 'echo $$ > esc.new.$PPID; mv esc.new.$PPID esc.$PPID; exec sleep 300' "
                  ">/dev/null 2>&1 & while [ ! -f esc.$$ ]; do sleep 0.01; done; exit 0")


def test_what_a_health_check_started_with_setsid_does_not_outlive_it(daemon: object, hive_env: Path) -> None:
    """A cmd check that backgrounds a ``setsid`` process on every run: each one is killed
    when its run ends (found by the run's HIVE_STEP_ID), none is left after ``hive down``."""
    project = write_project(hive_env / "hc", f"""
        version: "1"
        services:
          svc:
            runner: {{type: script, script: {{run: "exec sleep 3600"}}}}
            healthcheck: {{type: cmd, cmd: {{command: {json.dumps(ESCAPING_CHECK)}}}, interval: 200ms}}
        """)

    def escaped() -> list[int]:
        return [int(path.read_text()) for path in project.glob("esc.[0-9]*")]

    def alive(pids: list[int]) -> list[int]:
        return [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    try:
        assert run_cli("up", str(project)).returncode == 0
        wait_for(lambda: len(escaped()) >= 3, timeout=30, what="3 runs of the check")
        assert run_cli("down", str(project)).returncode == 0
        runs = escaped()
        wait_for(lambda: not alive(runs), timeout=15, what="the setsid processes of the check to be gone")
    finally:
        run_cli("down", str(project))
        for pid in alive(escaped()):
            os.kill(pid, signal.SIGKILL)  # do not leave them behind when the test fails
    record("faults", "a health check that backgrounds a setsid process", f"{len(runs)} runs",
           "each one killed when its run ended; none after hive down", "nothing")


_BEFORE = """
    version: "1"
    services:
      kept:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      changed:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        environment: {static: {VERSION: "1"}}
      gone:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
    """
_AFTER = """
    version: "1"
    services:
      kept:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      changed:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        environment: {static: {VERSION: "2"}}
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      added:
        runner: {type: script, script: {run: "exec sleep 1000"}}
    """


@pytest.mark.parametrize("down", ["stopped", "killed"])
def test_a_source_edited_while_the_daemon_is_down_converges_at_start(hive_env: Path, down: str) -> None:
    """hive.yaml edited while no daemon runs (or a reload cut short by ``kill -9``): the
    next daemon makes its services what a reload would have: the added one starts (its
    source runs), the removed one is stopped, the changed one runs its new configuration,
    one the user stopped stays stopped; the next reload has nothing left to do."""
    project = write_project(hive_env / "proj", _BEFORE)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        assert run_cli("service", "stop", "proj:idle").returncode == 0
        for name in ("kept", "changed", "gone"):
            wait_for(lambda name=name: _pids(hive_env, f"proj:{name}"), timeout=30, what=f"proj:{name} running")
        if down == "stopped":
            daemon.stop()
        else:
            daemon.kill9()
        write_project(project, _AFTER)
        daemon = start_daemon(hive_env)
        wait_for(lambda: _pids(hive_env, "proj:added"), timeout=30, what="proj:added started at start-up")
        wait_for(lambda: not _pids(hive_env, "proj:gone"), timeout=30, what="proj:gone stopped")

        def changed_runs_version_2() -> bool:
            pids = _pids(hive_env, "proj:changed")
            return len(pids) == 1 and psutil.Process(pids[0]).environ().get("VERSION") == "2"

        wait_for(changed_runs_version_2, timeout=30, what="proj:changed running its new configuration")
        states = json.loads(run_cli("services", "--json").stdout)
        assert {s["fqn"]: s["desired"] for s in states} == {
            "proj:kept": "running", "proj:changed": "running", "proj:idle": "stopped", "proj:added": "running"}
        assert not _pids(hive_env, "proj:idle")
        reload = run_cli("source", "reload", "proj")
        assert reload.returncode == 0, reload.stderr
        assert "nothing changed" in reload.stdout, reload.stdout
        record("faults", f"hive.yaml edited while the daemon was {down}", "1 added, 1 changed, 1 removed",
               "at start: added started, changed replaced, removed stopped, stopped one kept stopped; "
               "the next reload had nothing to do", "none")
    finally:
        daemon.stop()


def test_a_state_db_from_before_rows_for_every_service_starts_no_service_never_run(hive_env: Path) -> None:
    """An older Hive saved a row only for a service once started or stopped. The first start
    after the upgrade must not take a service without a row for one added while no daemon
    ran: ``migrate``, never started, stays stopped (a reload would not start it either)."""
    import sqlite3

    project = write_project(hive_env / "proj", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
          migrate:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        assert run_cli("service", "stop", "proj:migrate").returncode == 0
        daemon.stop()
        with sqlite3.connect(hive_env / "state.db") as db:  # as an older Hive left it
            db.execute("DELETE FROM services WHERE fqn = 'proj:migrate'")
            db.execute("DELETE FROM meta WHERE key = 'service_rows'")
        daemon = start_daemon(hive_env)
        wait_for(lambda: _pids(hive_env, "proj:web"), timeout=30, what="proj:web started again")
        states = {s["fqn"]: s for s in json.loads(run_cli("services", "--json").stdout)}
        assert states["proj:migrate"]["desired"] == "stopped" and not _pids(hive_env, "proj:migrate")
        # The rows are complete now: the next start tells an added service (converge test).
        daemon.stop()
        daemon = start_daemon(hive_env)
        wait_for(lambda: _pids(hive_env, "proj:web"), timeout=30, what="proj:web started again")
        assert not _pids(hive_env, "proj:migrate")
    finally:
        daemon.stop()
