"""The lean `hive status`: the standard library only, the full CLI's output byte for byte."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive.cli._lean import socket_path
from hive_client import resolve_socket_path
from tests.support import DaemonProcess, run_cli, start_daemon, wait_for, write_project

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
    assert socket_path("~/explicit.sock") == str(resolve_socket_path("~/explicit.sock"))


# --- `hive services` and `hive service status X` ------------------------------------------

STACK = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        healthcheck: {type: cmd, cmd: {command: "echo 'not yet: é' >&2; exit 1"}}
      worker:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        depends_on: [web]
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""
OTHER = """
    version: "1"
    services:
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""
# What changes from one answer to the next: the clocks and the checks' counters.
_MOVING = ("uptime_secs", "checked_at", "consecutive_failures")


def _steady(value: object) -> object:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _MOVING}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def _without_clocks(text: str) -> str:
    """Uptimes out: the uptime line of a status, the UPTIME column (the last) of a table."""
    return re.sub(r"\d+[smhd]( \d+[smhd])?$", "T", _without_uptime(text), flags=re.MULTILINE)


def _up_stack(home: Path) -> None:
    assert run_cli("up", str(write_project(home / "stack", STACK)), "idle").returncode == 0
    assert run_cli("up", str(write_project(home / "other", OTHER))).returncode == 0
    run_cli("service", "start", "stack:worker")  # waits for web, which never becomes healthy

    def settled() -> bool:
        states = json.loads(run_cli("services", "--json").stdout)
        by_fqn = {s["fqn"]: s for s in states}
        return (by_fqn["stack:web"]["state"] == "unhealthy"
                and (by_fqn["stack:worker"]["last_error"] or "").startswith("waiting for stack:web"))

    wait_for(settled, timeout=30, what="web unhealthy, worker waiting for it")


LEAN_FORMS = [
    ["services"], ["services", "stack"], ["services", "--states"], ["services", "stack", "--states"],
    ["service", "status", "web"], ["service", "status", "stack:worker"], ["service", "status", "other:idle"],
    # the lean path leaves these to the full CLI: an ambiguous name, an unknown one, a missing source
    ["service", "status", "idle"], ["service", "status", "nope"], ["services", "nope"],
]


@pytest.fixture
def patient_daemon(hive_env: Path) -> Iterator[DaemonProcess]:
    """A daemon whose dependents wait for an hour: the waiting state stays put while compared."""
    (hive_env / "config.toml").write_text("[daemon]\ndependency_timeout = 3600\n")
    process = start_daemon(hive_env)
    try:
        yield process
    finally:
        process.stop()


def test_lean_services_print_what_the_full_cli_prints(patient_daemon: DaemonProcess, home: Path) -> None:
    _up_stack(home)
    for form in LEAN_FORMS:
        lean, full = run_cli(*form), run_cli(*FULL, *form)
        assert (lean.returncode, lean.stderr) == (full.returncode, full.stderr), form
        assert _without_clocks(lean.stdout) == _without_clocks(full.stdout), form
        for json_form in ([*form, "--json"], ["--json", *form]):
            lean, full = run_cli(*json_form), run_cli(*FULL, *json_form)
            assert (lean.returncode, lean.stderr) == (full.returncode, full.stderr), json_form
            if lean.returncode == 0:
                assert _steady(json.loads(lean.stdout)) == _steady(json.loads(full.stdout)), json_form
    text = run_cli("services").stdout
    assert "  stack:worker: waiting for stack:web (unhealthy: cmd check: exit status 1: not yet: é)" in text
    assert "check cmd  FAIL" in run_cli("service", "status", "web").stdout
    ambiguous = run_cli("service", "status", "idle")
    assert ambiguous.returncode == 1 and "'idle' is ambiguous" in ambiguous.stderr


@pytest.mark.parametrize("argv", [["services"], ["service", "status", "stack:idle"], ["service", "status", "idle"]])
def test_lean_services_load_neither_click_nor_msgspec(daemon: DaemonProcess, home: Path, argv: list[str]) -> None:
    assert run_cli("up", str(write_project(home / "stack", OTHER))).returncode == 0
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(' '.join(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('click', 'msgspec', 'hive_client', 'rich', 'typing', 'pathlib')))))\n"
        f"sys.argv = ['hive', *{argv!r}]\n"
        "from hive.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "stack:idle" in result.stdout
    assert result.stderr == ""


def test_lean_services_without_a_daemon(hive_env: Path) -> None:
    for args in (["services"], ["service", "status", "web", "--json"]):
        lean, full = run_cli(*args), run_cli(*FULL, *args)
        assert (lean.returncode, lean.stdout, lean.stderr) == (full.returncode, full.stdout, full.stderr)
        assert lean.returncode == 3


def test_lean_path_takes_home_and_socket_options(daemon: DaemonProcess, home: Path) -> None:
    assert run_cli("up", str(write_project(home / "stack", OTHER))).returncode == 0
    elsewhere = {"HIVE_HOME": str(home / "nowhere")}
    for options in (["--home", str(home)], ["--socket", str(daemon.socket)]):
        for form in (["services"], ["service", "status", "idle"], ["status"]):
            lean = run_cli(*options, *form, env=elsewhere)
            full = run_cli(*FULL, *options, *form, env=elsewhere)
            assert lean.returncode == 0, lean.stderr
            assert _without_clocks(lean.stdout) == _without_clocks(full.stdout), form
        assert "stack:idle" in run_cli(*options, "--json", "services", env=elsewhere).stdout
    # Not running there: the same words as the full CLI's.
    for form in (["status"], ["services"]):
        lean = run_cli("--home", str(home / "nowhere"), *form)
        full = run_cli(*FULL, "--home", str(home / "nowhere"), *form)
        assert (lean.returncode, lean.stdout, lean.stderr) == (full.returncode, full.stdout, full.stderr)
        assert lean.returncode == 3
