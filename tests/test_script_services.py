"""Script services as a user writes them in hive.yaml, run by a real daemon: a ``run`` with
a ``#!`` line, and ``defaults`` naming a shell this machine lacks (as Hive's own project
file does with zsh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support import DaemonProcess, pids_of_service, run_cli, wait_for, write_project

PROJECT = f"""
    version: "1"
    defaults:
      hive.runner.script:
        shell: hive-test-no-such-shell
    services:
      py:
        runner:
          type: script
          script:
            run: |
              #!{sys.executable}
              import sys, time
              print("python service up", sys.argv[0].endswith(".script"), flush=True)
              time.sleep(1000)
      sh:
        runner: {{type: script, script: {{run: "echo shell service up && exec sleep 1000"}}}}
"""


def test_a_shebang_service_and_a_missing_default_shell(daemon: DaemonProcess, home: Path) -> None:
    project = write_project(home / "proj", PROJECT)
    up = run_cli("up", str(project))
    assert up.returncode == 0, up.stdout + up.stderr
    wait_for(lambda: "python service up True" in run_cli("logs", "proj:py").stdout,
             what="the python service's line")
    wait_for(lambda: "shell service up" in run_cli("logs", "proj:sh").stdout,
             what="the shell service's line")
    states = {s["fqn"]: s["state"] for s in json.loads(run_cli("services", "--json").stdout)}
    assert states == {"proj:py": "running", "proj:sh": "running"}
    assert run_cli("down", "proj").returncode == 0
    assert pids_of_service("proj:py") == [] and pids_of_service("proj:sh") == []
