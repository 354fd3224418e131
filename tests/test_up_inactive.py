"""``hive up`` says once per service which of its parts are parsed but not active yet."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import DaemonProcess, run_cli, write_project

PROJECT = """
    version: "1"
    proxy: {bind: "127.0.0.1:18080"}
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
    assert up.stderr.splitlines() == [
        "warning: proj: not active yet, kept for later: proxy settings (no proxy runs yet)",
        "warning: proj:web: not active yet: proxy routes (no proxy runs yet), "
        "blue-green rollout (it runs on its blue ports)",
        "warning: proj:api: not active yet: proxy routes (no proxy runs yet)",
    ]
    # The data on stdout stays data.
    again = run_cli("--json", "up", str(project), "worker")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["source"] == "proj"
    assert again.stderr == "warning: proj: not active yet, kept for later: proxy settings (no proxy runs yet)\n"
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
