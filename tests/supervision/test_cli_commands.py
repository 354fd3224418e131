"""Commands as people coming from compose or pm2 type them: patterns, names of other
tools' commands, one-line usage errors, `.` for this project, Ctrl-C on a follow."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess, run_cli, write_project

TWO = """
    version: "1"
    services:
      db:
        runner: {type: script, script: {run: "exec sleep 1000"}}
      api:
        runner: {type: script, script: {run: "echo api up; exec sleep 1000"}}
"""


def _pids(source: str = "") -> dict[str, int]:
    return {s["fqn"]: s["pid"] for s in json.loads(run_cli("services", *([source] if source else []), "--json").stdout)}


def test_service_commands_take_patterns(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, TWO)
    assert run_cli("up", str(project_dir)).returncode == 0
    before = _pids()
    restarted = run_cli("service", "restart", "proj:*")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.splitlines() == ["proj:api restarted", "proj:db restarted"]
    after = _pids()
    assert all(after[fqn] and after[fqn] != before[fqn] for fqn in before)

    stopped = run_cli("service", "stop", "a*")
    assert stopped.stdout.splitlines() == ["proj:api stopped"]
    none = run_cli("service", "stop", "nope:*")
    assert none.returncode == 4
    assert none.stderr.startswith("hive: error: no service matches 'nope:*'")


def test_other_tools_commands_get_a_hint_in_one_line(hive_env: Path) -> None:
    cases = {
        ("kill", "web"): "hive: error: no command 'kill'; did you mean `hive service stop web`?",
        ("ps",): "hive: error: no command 'ps'; did you mean `hive services`?",
        ("statsu",): "hive: error: no command 'statsu'; did you mean `hive status`?",
        ("up", "--bogus"): "hive: error: No such option '--bogus'. (see `hive up --help`)",
        ("scale",): "hive: error: Missing argument 'SERVICE'. (see `hive scale --help`)",
    }
    for args, line in cases.items():
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [line], args
        assert result.stdout == ""


def test_source_reload_of_this_project(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, TWO)
    assert run_cli("up", str(project_dir)).returncode == 0
    for args in (["source", "reload", "."], ["source", "reload"], ["source", "reload", "proj"]):
        result = subprocess.run([sys.executable, "-m", "hive", *args], cwd=project_dir,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith("source proj reloaded"), args
    elsewhere = run_cli("source", "reload")  # the tests' CWD holds no hive.yaml
    assert elsewhere.returncode == 4
    assert "no source for this directory" in elsewhere.stderr


def _follow_until(args: list[str], wanted: str) -> tuple[subprocess.Popen[str], str]:
    """Run a following command until a line contains ``wanted``; (process, that line)."""
    process = subprocess.Popen([sys.executable, "-m", "hive", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # ends when the command does: a failure shows, never hangs
        if wanted in line:
            return process, line
    raise AssertionError(f"{args} ended without {wanted!r}: {process.stderr.read() if process.stderr else ''}")


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    return process.returncode, stderr


def test_events_show_durations_and_end_quietly_on_ctrl_c(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          flaky:
            runner: {type: script, script: {run: "exit 1"}}
            restart: {policy: on-failure, delay: 0.2s, jitter: true}
    """)
    run_cli("up", str(project_dir), "--timeout", "1")
    process, line = _follow_until(["events", "-k", "service_restarting", "--since", "0"], "service_restarting")
    assert re.search(r"delay=\d+\.\ds\b", line), line
    code, stderr = _interrupt(process)
    assert (code, stderr) == (130, "")


def test_logs_follow_ends_quietly_on_ctrl_c(daemon: DaemonProcess, project_dir: Path) -> None:
    write_project(project_dir, TWO)
    assert run_cli("up", str(project_dir)).returncode == 0
    process, _ = _follow_until(["logs", "-f", "proj:api"], "api up")
    code, stderr = _interrupt(process)
    assert (code, stderr) == (130, "")
