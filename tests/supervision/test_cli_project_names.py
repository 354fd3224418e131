"""`hive restart|start|stop|logs NAME` as compose users type them: a bare NAME is the
current project's service; `hive stop` with no NAME still stops the daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from tests.support import DaemonProcess, run_cli, write_project

WEB = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "echo web says hi; exec sleep 1000"}}
      db:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""

OTHER = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      queue:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


def _hive_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `hive`, run from ``directory`` as a user in that project would."""
    return subprocess.run([sys.executable, "-m", "hive", *args], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def _two_projects(home: Path) -> tuple[Path, Path]:
    """`p` (web, db) and `other` (web, queue), both up: a bare `web` is ambiguous
    but for the project it is typed in."""
    here = write_project(home / "p", WEB)
    there = write_project(home / "other", OTHER)
    for project in (here, there):
        up = run_cli("up", str(project))
        assert up.returncode == 0, up.stderr
    return here, there


def _services() -> dict[str, dict[str, object]]:
    return {s["fqn"]: s for s in json.loads(run_cli("services", "--json").stdout)}


def test_restart_a_service_of_this_project(daemon: DaemonProcess, home: Path) -> None:
    here, _ = _two_projects(home)
    before = _services()
    restarted = _hive_in(here, "restart", "web")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.splitlines() == ["p:web restarted"]
    after = _services()
    assert after["p:web"]["state"] == "running"
    assert after["p:web"]["pid"] != before["p:web"]["pid"]
    assert {fqn: after[fqn]["pid"] for fqn in ("p:db", "other:web", "other:queue")} == {
        fqn: before[fqn]["pid"] for fqn in ("p:db", "other:web", "other:queue")}

    as_json = _hive_in(here, "restart", "web", "db", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["restarted"] == ["p:web", "p:db"]


def test_stop_and_start_a_service_keep_the_daemon(daemon: DaemonProcess, home: Path) -> None:
    here, _ = _two_projects(home)
    stopped = _hive_in(here, "stop", "web")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == ["p:web stopped"]
    assert daemon.alive()
    states = {fqn: s["state"] for fqn, s in _services().items()}
    assert states == {"p:web": "stopped", "p:db": "running", "other:web": "running", "other:queue": "running"}

    started = _hive_in(here, "start", "web")
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == ["p:web started"]
    assert _services()["p:web"]["state"] == "running"

    # SOURCE:NAME and patterns pass through, from anywhere.
    other = run_cli("stop", "other:*")
    assert other.returncode == 0, other.stderr
    assert other.stdout.splitlines() == ["other:queue stopped", "other:web stopped"]
    flag = _hive_in(here, "stop", "web", "--keep-services")
    assert flag.returncode == 2
    assert "--keep-services is for the daemon" in flag.stderr
    assert daemon.alive()


def test_stop_without_a_name_still_stops_the_daemon(hive_env: Path) -> None:
    project = write_project(hive_env / "p", WEB)
    up = _hive_in(project, "up")  # starts the daemon too
    assert up.returncode == 0, up.stderr
    pid = int((hive_env / "hive.pid").read_text())
    try:
        assert _hive_in(project, "stop", "web").returncode == 0
        assert psutil.pid_exists(pid)
        stopped = _hive_in(project, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"Hive stopped (pid {pid})"
        assert not (hive_env / "hive.sock").exists()
    finally:
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            psutil.Process(pid).kill()


def test_logs_of_a_service_of_this_project(daemon: DaemonProcess, home: Path) -> None:
    here, _ = _two_projects(home)
    shown = _hive_in(here, "logs", "web")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any("web says hi" in line for line in lines), lines
    assert all(line.split()[1] == "p:web" for line in lines), lines
    # Another project's service is not this one's, though no other source has a `queue`.
    theirs = _hive_in(here, "logs", "queue")
    assert theirs.returncode == 4, theirs.stdout
    assert theirs.stderr.startswith("hive: error: no service 'queue' in project p (it has: db, web)")


def test_unknown_name_names_the_project_and_its_services(daemon: DaemonProcess, home: Path) -> None:
    here, there = _two_projects(home)
    for args in (["restart", "nope"], ["stop", "nope"], ["start", "nope"], ["logs", "nope"]):
        result = _hive_in(here, *args)
        assert result.returncode == 4, (args, result.stderr)
        assert result.stderr.splitlines() == [
            "hive: error: no service 'nope' in project p (it has: db, web)",
            "  name another project's as SOURCE:nope"], (args, result.stderr)
    # `queue` is the other project's: not this one's, though it is unambiguous.
    before = _services()["other:queue"]["pid"]
    elsewhere = _hive_in(here, "restart", "queue")
    assert elsewhere.returncode == 4
    assert "no service 'queue' in project p (it has: db, web)" in elsewhere.stderr
    assert _services()["other:queue"]["pid"] == before
    # From the other project's directory, the same bare name is its own.
    there_restart = _hive_in(there, "restart", "queue")
    assert there_restart.returncode == 0, there_restart.stderr
    assert there_restart.stdout.splitlines() == ["other:queue restarted"]
