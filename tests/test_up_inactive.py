"""``hive up`` says once per service which of its parts are parsed but not active yet."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import DaemonProcess, run_cli, write_project

PROJECT = """
    version: "1"
    observability: {resource_interval: 5s}
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        rollout:
          type: blue-green
          blue-green: {ports: {http: {blue: 18001, green: 18101}}}
        healthcheck: {type: cmd, cmd: {command: "true"}}
        proxy: {path: /}
      api:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        rollout: {type: recreate, recreate: {ports: {http: 18002}}}
        proxy: [{path: /api}, {path: /v2}]
      worker:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


def test_up_warns_once_per_service(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "proj", PROJECT)
    up = run_cli("up", str(project))
    assert up.returncode == 0, up.stdout + up.stderr
    # Routes and a script service's blue-green rollout are active: no warning for them.
    assert up.stderr.splitlines() == [
        "warning: proj: not active yet, kept for later: observability",
    ]
    # The data on stdout stays data.
    again = run_cli("--json", "up", str(project), "worker")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["source"] == "proj"
    assert again.stderr == "warning: proj: not active yet, kept for later: observability\n"
    run_cli("down", "proj")


def test_a_plain_project_gets_no_warning(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "plain", """
        version: "1"
        services:
          worker:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)
    up = run_cli("up", str(project))
    assert up.returncode == 0, up.stderr
    assert up.stderr == ""
    run_cli("down", "plain")


def test_up_says_which_keys_cannot_apply(daemon: DaemonProcess, home: Path) -> None:
    """`restart:` in a container block, `ports:` with host networking: warned with file,
    line and key (the container service is not started here: no engine needed)."""
    project = write_project(home / "keys", """
        version: "1"
        services:
          worker:
            runner: {type: script, script: {run: "exec sleep 1000"}}
          web:
            runner:
              type: docker
              docker: {image: nginx:1.27, network_mode: host, ports: ["8080:80"], restart: always}
        """)
    up = run_cli("up", str(project), "worker")
    assert up.returncode == 0, up.stdout + up.stderr
    lines = up.stderr.splitlines()
    assert len(lines) == 2, up.stderr
    assert lines[0].startswith("hive.yaml:8: warning: services.web.runner.docker.restart: ignored: ")
    assert lines[1].startswith("hive.yaml:8: warning: services.web.runner.docker.ports: ignored with network_mode: host")
    run_cli("down", "keys")
