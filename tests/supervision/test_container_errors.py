"""What a user sees when a container service cannot start: one clear line in `hive services`
and in the service's logs, no traceback, the service `crashed`, and the daemon serving on.

Each case is a real misconfiguration against a real engine (or a missing one)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.engines import IMAGE, require_engine
from tests.support import run_cli, start_daemon, wait_for, write_project


def _up_and_fail(hive_env: Path, project: Path, runner: str, config_toml: str = "") -> tuple[dict, str]:
    """`hive up` the project, wait for its one service to crash; its status and its logs."""
    if config_toml:
        (hive_env / "config.toml").write_text(config_toml)
    daemon = start_daemon(hive_env)
    try:
        write_project(project, f'version: "1"\nservices:\n  web:\n    runner: {runner}\n')
        up = run_cli("up", str(project))
        assert "Traceback" not in up.stderr + up.stdout

        def crashed() -> dict | None:
            listed = json.loads(run_cli("services", "--json").stdout)
            return next((s for s in listed if s["fqn"] == "proj:web" and s["state"] == "crashed"), None)

        status = wait_for(crashed, timeout=60, what="the service to be crashed")
        table = run_cli("services")
        assert table.returncode == 0 and "Traceback" not in table.stderr
        assert f"proj:web: {status['last_error']}" in table.stdout  # under the table
        logs = run_cli("logs", "proj:web").stdout
        assert run_cli("ping").returncode == 0  # the daemon keeps serving
        return status, logs
    finally:
        run_cli("down", "proj")
        daemon.stop()


def _docker(**block: object) -> str:
    fields = {"image": IMAGE, "command": ["sleep", "1000"], "network_mode": "host", **block}
    return json.dumps({"type": "docker", "docker": fields})


def _podman(**block: object) -> str:
    fields = {"image": IMAGE, "command": ["sleep", "1000"], **block}
    return json.dumps({"type": "podman", "podman": fields})


def _check(status: dict, logs: str, expected: str) -> None:
    error = status["last_error"]
    assert error == f"cannot start proj:web: {expected}", error
    assert "\n" not in error and "Traceback" not in logs
    assert expected in logs


def test_engine_socket_unreachable(hive_env: Path, project_dir: Path) -> None:
    require_engine("docker")
    status, logs = _up_and_fail(hive_env, project_dir, _docker(),
                                f'[runners.docker]\nsocket = "{hive_env}/no-engine.sock"\n')
    assert status["last_error"].startswith(
        f"cannot start proj:web: cannot reach the Docker engine at {hive_env}/no-engine.sock")
    assert "Traceback" not in logs and "cannot reach the Docker engine" in logs


def test_image_missing_and_pull_refused(hive_env: Path, project_dir: Path) -> None:
    require_engine("podman")
    status, logs = _up_and_fail(hive_env, project_dir,
                                _podman(image="localhost/hive-test-missing:nope", deny_pull=True))
    _check(status, logs, "image localhost/hive-test-missing:nope is not present and deny_pull is set")


def test_port_already_taken(hive_env: Path, project_dir: Path) -> None:
    require_engine("podman")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, logs = _up_and_fail(hive_env, project_dir, _podman(ports=[f"{port}:80"]))
    _check(status, logs, f"port 127.0.0.1:{port} is already in use")


def test_volume_leaving_the_project(hive_env: Path, project_dir: Path) -> None:
    require_engine("docker")
    status, logs = _up_and_fail(hive_env, project_dir, _docker(volumes=["../outside:/data"]))
    root = os.path.realpath(project_dir)
    _check(status, logs, f"invalid volume '../outside:/data': ../outside resolves to "
                         f"{os.path.dirname(root)}/outside, outside the project {root}")


def test_compose_file_missing(hive_env: Path, project_dir: Path) -> None:
    runner = json.dumps({"type": "compose", "compose": {"file": "missing.yaml", "service": "web"}})
    status, logs = _up_and_fail(hive_env, project_dir, runner)
    _check(status, logs, f"compose file {project_dir}/missing.yaml does not exist")


def test_no_compose_implementation(hive_env: Path, project_dir: Path) -> None:
    (project_dir / "compose.yaml").parent.mkdir(parents=True, exist_ok=True)
    (project_dir / "compose.yaml").write_text(json.dumps({"services": {"web": {"image": IMAGE}}}))
    runner = json.dumps({"type": "compose", "compose": {"file": "compose.yaml", "service": "web"}})
    status, logs = _up_and_fail(hive_env, project_dir, runner,
                                '[runners.compose]\ncommand = ["no-such-compose"]\n')
    _check(status, logs, "[runners.compose] command does not work: no-such-compose is not installed")
