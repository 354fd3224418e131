"""The lean `hive status`: the standard library only, the full CLI's output byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hive.cli._lean import socket_path
from hive_client import resolve_socket_path
from tests.support import DaemonProcess, run_cli

# `--timeout` is an option the lean path leaves to the full CLI: the same request, the long way.
FULL = ("--timeout", "30")


def _without_uptime(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("uptime"))


def test_lean_status_prints_what_the_full_cli_prints(daemon: DaemonProcess) -> None:
    lean, full = run_cli("status"), run_cli(*FULL, "status")
    assert (lean.returncode, full.returncode) == (0, 0)
    assert _without_uptime(lean.stdout) == _without_uptime(full.stdout)
    assert f"pid       {daemon.pid}" in lean.stdout

    for args in (["status", "--json"], ["--json", "status"]):
        lean_json = json.loads(run_cli(*args).stdout)
        full_json = json.loads(run_cli(*FULL, *args).stdout)
        lean_json.pop("uptime_secs"), full_json.pop("uptime_secs")
        assert lean_json == full_json
        assert lean_json["pid"] == daemon.pid


def test_lean_status_without_a_daemon(hive_env: Path) -> None:
    for args in (["status"], ["status", "--json"]):
        lean, full = run_cli(*args), run_cli(*FULL, *args)
        assert (lean.returncode, lean.stdout, lean.stderr) == (full.returncode, full.stdout, full.stderr)
        assert lean.returncode == 3


def test_lean_status_loads_neither_click_nor_msgspec(daemon: DaemonProcess) -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(' '.join(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('click', 'msgspec', 'hive_client', 'rich', 'typing', 'pathlib')))))\n"
        "sys.argv = ['hive', 'status']\n"
        "from hive.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "is running" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("env", [{"HIVE_SOCKET": "~/s.sock"}, {"HIVE_HOME": "~/h"}, {}])
def test_lean_socket_is_the_clients(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HIVE_SOCKET", raising=False)
    monkeypatch.delenv("HIVE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert socket_path() == str(resolve_socket_path())
