"""`hive up` as a new user meets it: it starts the daemon, shows each service come up, and
when one does not, says which, why, and its last lines, within the time it was given."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import DaemonProcess, run_cli, start_daemon, write_project

UNHEALTHY_DEPENDENCY = """
    version: "1"
    services:
      grpcdep:
        runner: {type: script, script: {run: "echo starting grpc; exec sleep 1000"}}
        rollout: {type: recreate, recreate: {ports: {}}}
        healthcheck: {type: cmd, cmd: {command: "echo port 50051 not open; false", interval: 0.1s, retries: 1}}
      api:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        depends_on: [grpcdep]
"""

WAITING = "sl:api: waiting for sl:grpcdep (unhealthy: cmd check: exit status 1: port 50051 not open)"


@pytest.fixture
def no_daemon_left(hive_env: Path) -> Iterator[Path]:
    """For tests whose `hive up` starts the daemon: it is killed after."""
    yield hive_env
    pid_file = hive_env / "hive.pid"
    if pid_file.exists():
        text = pid_file.read_text().strip()
        if text and psutil.pid_exists(int(text)):
            os.kill(int(text), signal.SIGKILL)


def test_up_starts_the_daemon(no_daemon_left: Path, home: Path) -> None:
    project = write_project(home / "proj", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
    """)
    up = run_cli("up", str(project))
    assert up.returncode == 0, up.stderr
    assert "Hive started (pid" in up.stdout
    assert "proj:web: running" in up.stdout
    assert "proj: 1 service up" in up.stdout
    assert json.loads(run_cli("services", "--json").stdout)[0]["state"] == "running"
    assert run_cli("stop").returncode == 0


def test_up_names_what_did_not_come_up_with_reason_and_logs(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "sl", UNHEALTHY_DEPENDENCY)
    up = run_cli("--timeout", "2", "up", str(project), timeout=25)  # the daemon's own wait is 30 s
    assert up.returncode == 1
    assert WAITING in up.stdout, up.stdout
    assert "sl:grpcdep: unhealthy: cmd check: exit status 1: port 50051 not open" in up.stdout
    assert "    starting grpc" in up.stdout  # its last log lines
    error = up.stderr.strip()
    assert error.startswith("hive: error: 2 services did not come up within 2 s: sl:api, sl:grpcdep")
    assert "Traceback" not in error

    listed = run_cli("services")
    assert WAITING in listed.stdout.replace("\n  ", "\n")


def test_up_json_is_one_object(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "sl", UNHEALTHY_DEPENDENCY)
    up = run_cli("up", str(project), "--timeout", "1", "--json", timeout=25)
    assert up.returncode == 1
    answer = json.loads(up.stdout)  # one object, no progress lines
    assert answer["failed"] == ["sl:api", "sl:grpcdep"]
    assert answer["timed_out"] is True
    assert answer["reasons"]["sl:api"] == WAITING.removeprefix("sl:api: ")
    assert "starting grpc" in answer["logs"]["sl:grpcdep"]
    assert "\x1b[" not in up.stdout


def test_up_fails_at_once_on_a_failed_start(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "bad", """
        version: "1"
        services:
          job:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            hooks:
              pre-up: [{run: "echo config missing >&2; exit 3"}]
    """)
    up = run_cli("up", str(project), timeout=25)  # waits 120 s for what is only pending
    assert up.returncode == 1
    assert "bad:job: failed: " in up.stdout
    assert "config missing" in up.stdout  # the hook's output: its last log lines
    assert "1 service did not come up: bad:job" in up.stderr

    listed = run_cli("services").stdout
    assert "  bad:job: " in listed


def test_dependency_timeout_is_a_setting(hive_env: Path, home: Path) -> None:
    (hive_env / "config.toml").write_text("[daemon]\ndependency_timeout = 0.3\n")
    daemon = start_daemon(hive_env)
    try:
        project = write_project(home / "sl", UNHEALTHY_DEPENDENCY)
        up = run_cli("up", str(project), "--timeout", "20", "--json", timeout=40)
        answer = json.loads(up.stdout)
        assert answer["reasons"]["sl:api"].startswith(
            "timeout waiting for dependency sl:grpcdep (not ready within 0.3 s: [daemon] dependency_timeout)")
    finally:
        daemon.stop()
