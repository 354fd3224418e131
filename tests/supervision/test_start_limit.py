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


def _runs(fqn: str) -> int:
    """How many times the service ran: each run writes one line."""
    return run_cli("logs", fqn, "--grep", "cannot bind").stdout.count("cannot bind")


def test_a_crash_loop_stops_at_the_start_limit(hive_env: Path, home: Path) -> None:
    (hive_env / "config.toml").write_text("[restart]\nstart_limit_burst = 3\nstart_limit_interval = 600\n")
    daemon = start_daemon(hive_env)
    try:
        project = write_project(home / "p", CRASH_LOOP)
        up = run_cli("up", str(project), "--json", timeout=60)
        # A start without health checks is done once its process runs: `up` fails only
        # when the exit is seen first, which is most often, but not on a loaded machine.
        assert (up.returncode, json.loads(up.stdout)["failed"]) in ((1, ["p:loop"]), (0, []))
        reason = wait_for(lambda: _limit_reason("p:loop"), what="the start limit")
        assert reason.startswith("start limit hit: restarted 3 times within 600 s (last: exited with code 2)")
        assert reason.endswith("`hive service start p:loop` tries again")

        loop = _service("p:loop")
        assert (loop["state"], loop["restart_count"], loop["last_error"]) == ("crashed", 3, reason)
        assert f"  p:loop: {reason}" in run_cli("services").stdout

        # Down and up again: a start by the user counts from zero, to the limit again.
        assert run_cli("down", "p").returncode == 0
        assert _runs("p:loop") == 4  # the first start and its three restarts
        assert run_cli("up", str(project), timeout=60).returncode in (0, 1)
        wait_for(lambda: _runs("p:loop") == 8 and _service("p:loop")["state"] == "crashed",
                 what="four runs more, then the limit")
        again = _service("p:loop")
        assert (again["restart_count"], again["last_error"]) == (3, reason)
    finally:
        daemon.stop()
