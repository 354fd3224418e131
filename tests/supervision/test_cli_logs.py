"""`hive logs` over several services: merged in time order, searched, each in its colour."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess, run_cli, wait_for, write_project

PROJECT = """
    version: "1"
    services:
      a:
        runner: {type: script, script: {run: "echo a-1; echo a-2 ERROR disk; exec sleep 1000"}}
      b:
        runner: {type: script, script: {run: "echo b-1; echo b-2 ERROR net; exec sleep 1000"}}
      c:
        runner: {type: script, script: {run: "echo c-1; exec sleep 1000"}}
"""


def _messages(*args: str) -> list[tuple[str, str]]:
    result = run_cli("logs", *args, "--json")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    return [(e["service_fqn"], e["message"]) for e in entries if e["stream"] == "stdout"]


def _up(project_dir: Path) -> None:
    write_project(project_dir, PROJECT)
    assert run_cli("up", str(project_dir)).returncode == 0
    wait_for(lambda: len(_messages("proj:*")) == 5, what="every service's output")


def test_several_services_merged_in_time_order(daemon: DaemonProcess, project_dir: Path) -> None:
    _up(project_dir)
    merged = run_cli("logs", "a", "proj:b", "--json")
    entries = [json.loads(line) for line in merged.stdout.splitlines()]
    assert {e["service_fqn"] for e in entries} == {"proj:a", "proj:b"}
    stamps = [e["timestamp"] for e in entries]
    assert stamps == sorted(stamps)
    assert [m for _, m in _messages("a", "proj:b") if m.startswith("a-")] == ["a-1", "a-2 ERROR disk"]
    assert len(_messages("a", "b", "-n", "3")) <= 3


def test_grep_and_until(daemon: DaemonProcess, project_dir: Path) -> None:
    _up(project_dir)
    assert sorted(_messages("--grep", "ERROR (disk|net)")) == [("proj:a", "a-2 ERROR disk"),
                                                               ("proj:b", "b-2 ERROR net")]
    assert _messages("proj:*", "--grep", "^c-") == [("proj:c", "c-1")]
    assert _messages("--until", "1h") == []
    bad = run_cli("logs", "--grep", "(")
    assert bad.returncode == 1
    assert bad.stderr.startswith("hive: error: --grep '(' is not a valid regular expression")


def test_each_service_has_its_colour_on_a_terminal(daemon: DaemonProcess, project_dir: Path) -> None:
    _up(project_dir)
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "hive", "logs", "proj:*"], stdout=terminal,
                               stderr=subprocess.PIPE, env={**os.environ, "TERM": "xterm-256color",
                                                            "COLUMNS": "200"})
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the command ended: the terminal is closed
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=30) == 0
    colour_of = {
        name: code for code, name in re.findall(rb"\x1b\[([0-9;]+)m(proj:[abc])\s*\|", output)
    }
    assert set(colour_of) == {b"proj:a", b"proj:b", b"proj:c"}, output[:400]
    assert len(set(colour_of.values())) == 3
