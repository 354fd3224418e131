"""The service commands as a user types them: up, services, service, source, logs, down,
config validate."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import DaemonProcess, pids_of_service, run_cli, wait_for, write_project

PROJECT = """
    version: "1"
    services:
      db:
        runner: {type: script, script: {run: "echo db ready; exec sleep 1000"}}
      api:
        runner: {type: script, script: {run: "echo api listening; exec sleep 1000"}}
        depends_on: [db]
        restart: on-failure
"""


def test_up_services_and_down(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, PROJECT)
    up = run_cli("up", str(project_dir))
    assert up.returncode == 0, up.stderr
    assert "proj:api" in up.stdout
    assert "running" in up.stdout

    listed = json.loads(run_cli("services", "--json").stdout)
    assert {s["fqn"]: s["state"] for s in listed} == {"proj:api": "running", "proj:db": "running"}
    assert all(s["pid"] for s in listed)

    assert run_cli("services", "--states").stdout.splitlines() == ["proj:api running", "proj:db running"]
    assert json.loads(run_cli("services", "proj", "--states", "--json").stdout) == {
        "proj:api": "running", "proj:db": "running"}
    missing = run_cli("services", "nope", "--states")
    assert missing.returncode != 0 and "nope" in missing.stderr and "Traceback" not in missing.stderr

    table = run_cli("services").stdout.splitlines()
    assert table[0].split() == ["SERVICE", "STATE", "HEALTH", "PID", "PORTS", "RESTARTS", "UPTIME"]

    down = run_cli("down", "proj")
    assert down.returncode == 0, down.stderr
    assert pids_of_service("proj:api") == []
    assert pids_of_service("proj:db") == []
    states = {s["fqn"]: s["state"] for s in json.loads(run_cli("services", "--json").stdout)}
    assert states == {"proj:api": "stopped", "proj:db": "stopped"}


def test_up_inside_the_project_and_by_service_name(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, PROJECT)
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "hive", "up", "db"], cwd=project_dir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    states = {s["name"]: s["state"] for s in json.loads(run_cli("services", "--json").stdout)}
    assert states == {"db": "running", "api": "stopped"}

    # `hive service` resolves a bare name to its source.
    assert run_cli("service", "start", "api").returncode == 0
    status = json.loads(run_cli("service", "status", "api", "--json").stdout)
    assert status["state"] == "running"
    assert status["fqn"] == "proj:api"
    restarted = run_cli("service", "restart", "proj:api")
    assert restarted.returncode == 0
    assert "restarted" in restarted.stdout
    assert json.loads(run_cli("service", "status", "api", "--json").stdout)["pid"] != status["pid"]
    assert run_cli("service", "stop", "api").returncode == 0
    assert json.loads(run_cli("service", "status", "proj:api", "--json").stdout)["state"] == "stopped"


def test_errors_are_one_clear_line(daemon: DaemonProcess, project_dir: Path) -> None:
    missing = run_cli("service", "start", "nope:web")
    assert missing.returncode == 4
    assert "no service" in missing.stderr
    bad_fqn = run_cli("service", "status", "Bad:Name")
    assert bad_fqn.returncode != 0
    assert "INVALID_FQN" in bad_fqn.stderr
    no_source = run_cli("source", "remove", "ghost")
    assert no_source.returncode == 4
    assert "no source 'ghost'" in no_source.stderr
    not_a_project = run_cli("up", str(project_dir))
    assert not_a_project.returncode != 0
    for result in (missing, bad_fqn, no_source, not_a_project):
        assert "Traceback" not in result.stderr + result.stdout
        assert len(result.stderr.strip().splitlines()) <= 2


def test_source_commands(daemon: DaemonProcess, project_dir: Path, home: Path) -> None:
    write_project(project_dir, PROJECT)
    added = run_cli("source", "add", str(project_dir), "--name", "shop")
    assert added.returncode == 0, added.stderr
    assert "source shop added (2 services)" in added.stdout
    # Adding the same path again is idempotent.
    again = run_cli("--json", "source", "add", str(project_dir))
    assert json.loads(again.stdout)["name"] == "shop"

    listed = json.loads(run_cli("source", "list", "--json").stdout)
    assert [(s["name"], s["source_type"], s["service_count"]) for s in listed] == [("shop", "yaml", 2)]

    assert run_cli("source", "start", "shop").returncode == 0
    (project_dir / "hive.yaml").write_text((project_dir / "hive.yaml").read_text().replace("api listening", "api up"))
    dry = run_cli("source", "reload", "shop", "--dry-run")
    assert dry.returncode == 0
    assert "restart  shop:api" in dry.stdout
    assert "dry run" in dry.stdout
    assert run_cli("source", "reload", "shop").returncode == 0

    assert run_cli("source", "disable", "shop").returncode == 0
    refused = run_cli("source", "start", "shop")
    assert refused.returncode != 0
    assert "disabled" in refused.stderr
    assert run_cli("source", "enable", "shop").returncode == 0
    assert run_cli("source", "remove", "shop").returncode == 0
    assert json.loads(run_cli("source", "list", "--json").stdout) == []
    assert pids_of_service("shop:api") == []


def test_logs_tail_follow_and_json(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          talk:
            runner: {type: script, script: {run: "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 1000"}}
    """)
    assert run_cli("up", str(project_dir)).returncode == 0
    wait_for(lambda: "line 5" in run_cli("logs", "proj:talk").stdout, what="the output")
    tail = [line for line in run_cli("logs", "proj:talk", "--tail", "2").stdout.splitlines() if line]
    assert len(tail) == 2
    assert tail[-1].endswith("line 5")
    as_json = [json.loads(line) for line in run_cli("logs", "proj:talk", "--json").stdout.splitlines()]
    messages = [entry["message"] for entry in as_json if entry["stream"] == "stdout"]
    assert messages == [f"line {i}" for i in range(1, 6)]
    assert {entry["service_fqn"] for entry in as_json} == {"proj:talk"}
    assert any(entry["stream"] == "hive" and entry["message"].startswith("started") for entry in as_json)
    bad_level = run_cli("logs", "--level", "loud")
    assert bad_level.returncode != 0
    assert "unknown log level" in bad_level.stderr


def test_create_and_delete_from_the_cli(daemon: DaemonProcess, home: Path) -> None:
    assert run_cli("source", "add", str(home / "jobs.db")).returncode == 0
    created = run_cli("service", "create", "jobs", "worker", "--config",
                      json.dumps({"runner": {"type": "script", "script": {"run": "exec sleep 1000"}}}))
    assert created.returncode == 0, created.stderr
    wait_for(lambda: pids_of_service("jobs:worker"), what="the worker to start")
    assert run_cli("service", "update", "jobs:worker", "--patch",
                   json.dumps({"environment": {"static": {"X": "1"}}})).returncode == 0
    assert run_cli("service", "delete", "jobs:worker").returncode == 0
    assert pids_of_service("jobs:worker") == []


def test_config_validate(tmp_path: Path) -> None:
    good = write_project(tmp_path / "good", PROJECT)
    result = run_cli("config", "validate", str(good))
    assert result.returncode == 0
    assert "valid" in result.stdout
    assert "2 services" in result.stdout

    bad = write_project(tmp_path / "bad", """
        version: "1"
        services:
          web:
            runner:
              type: script
              script: {}
            restat: always
    """)
    result = run_cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert "hive.yaml:6: services.web.runner.script.run" in result.stdout
    assert "did you mean 'restart'" in result.stdout

    as_json = json.loads(run_cli("config", "validate", str(bad), "--json").stdout)
    assert as_json["valid"] is False
    assert any(issue["path"] == "services.web.runner.script.run" for issue in as_json["issues"])
