"""The start limit (systemd's StartLimitBurst/IntervalSec): a crash loop stops, says why,
and a start by the user counts again from zero."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli, start_daemon, wait_for, write_project

CRASH_LOOP = """
    version: "1"
    services:
      loop:
        runner: {type: script, script: {run: "echo cannot bind >&2; exit 2"}}
        restart: {policy: on-failure, delay: 0.05s, max_delay: 0.05s, jitter: false}
"""


def _service(fqn: str) -> dict[str, object]:
    listed = json.loads(run_cli("services", "--json").stdout)
    return next(s for s in listed if s["fqn"] == fqn)


def _limit_reason(fqn: str) -> str:
    error = str(_service(fqn)["last_error"] or "")
    return error if error.startswith("start limit hit") else ""


def test_a_crash_loop_stops_at_the_start_limit(hive_env: Path, home: Path) -> None:
    (hive_env / "config.toml").write_text("[restart]\nstart_limit_burst = 3\nstart_limit_interval = 600\n")
    daemon = start_daemon(hive_env)
    try:
        project = write_project(home / "p", CRASH_LOOP)
        up = run_cli("up", str(project), "--json", timeout=60)
        assert up.returncode == 1
        assert json.loads(up.stdout)["failed"] == ["p:loop"]  # its first crash already
        reason = wait_for(lambda: _limit_reason("p:loop"), what="the start limit")
        assert reason.startswith("start limit hit: restarted 3 times within 600 s (last: exited with code 2)")
        assert reason.endswith("`hive service start p:loop` tries again")

        loop = _service("p:loop")
        assert (loop["state"], loop["restart_count"], loop["last_error"]) == ("crashed", 3, reason)
        assert f"  p:loop: {reason}" in run_cli("services").stdout

        # Down and up again: a start by the user counts from zero, to the limit again.
        assert run_cli("down", "p").returncode == 0
        assert run_cli("up", str(project), timeout=60).returncode == 1
        assert wait_for(lambda: _limit_reason("p:loop"), what="the start limit again") == reason
        assert _service("p:loop")["restart_count"] == 3
    finally:
        daemon.stop()
