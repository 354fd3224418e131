"""`hive ui` headless (textual's pilot) against a real daemon: services appear from the
service stream, the log pane follows the selected one, keys stop/start/restart it and the
table follows the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Log

from hive.cli._dashboard import Dashboard
from hive_client import BlockingClient
from tests.support import DaemonProcess, run_cli, wait_until, write_project

pytestmark = pytest.mark.anyio

PROJECT = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "echo hello from web; exec sleep 1000"}}
      worker:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


@pytest.fixture
def project(daemon: DaemonProcess, home: Path) -> Path:
    root = write_project(home / "dash", PROJECT)
    with BlockingClient(daemon.socket) as client:
        client.add_source(root)
        client.start_source("dash")
    return root


def _cell(app: Dashboard, fqn: str, column: str) -> str | None:
    table = app.query_one("#services", DataTable)
    if fqn not in table.rows:
        return None
    return str(table.get_cell(fqn, column))


async def test_dashboard_shows_services_and_keys_act(daemon: DaemonProcess, project: Path) -> None:
    app = Dashboard(str(daemon.socket))
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(lambda: _cell(app, "dash:web", "state") == "running", what="web in the table")
        await wait_until(lambda: _cell(app, "dash:worker", "state") == "running", what="worker in the table")
        with BlockingClient(daemon.socket) as client:
            web = client.get_service_status("dash:web")
        assert _cell(app, "dash:web", "pid") == str(web.pid)
        assert _cell(app, "dash:web", "restarts") == "0"
        assert _cell(app, "dash:web", "reason") == ""

        # The first row is selected: its logs are in the pane.
        assert app.selected == "dash:web"
        log = app.query_one("#logs", Log)
        await wait_until(lambda: any("hello from web" in line for line in log.lines), what="web's log line")

        await pilot.press("x")
        await wait_until(lambda: _cell(app, "dash:web", "state") == "stopped", what="web stopped in the table")
        assert _cell(app, "dash:web", "pid") == "-"
        assert "not asked to run" in (_cell(app, "dash:web", "reason") or "")
        with BlockingClient(daemon.socket) as client:
            assert client.get_service_status("dash:web").state == "stopped"
        assert _cell(app, "dash:worker", "state") == "running"  # only the selected one

        await pilot.press("s")
        await wait_until(lambda: _cell(app, "dash:web", "state") == "running", what="web running again")
        started = _cell(app, "dash:web", "pid")
        assert started not in (None, "-", str(web.pid))

        # The cursor moves to worker: r restarts it, and its row gets a new pid.
        await pilot.press("down")
        assert app.selected == "dash:worker"
        worker_pid = _cell(app, "dash:worker", "pid")
        await pilot.press("r")
        await wait_until(lambda: _cell(app, "dash:worker", "pid") not in (None, "-", worker_pid),
                         what="worker's new pid")

        # The filter hides what does not match, Escape brings it back.
        await pilot.press("slash", "w", "o", "r")
        assert _cell(app, "dash:web", "state") is None
        assert _cell(app, "dash:worker", "state") == "running"
        await pilot.press("escape")
        assert _cell(app, "dash:web", "state") == "running"


def test_ui_without_a_daemon_is_one_line(hive_env: Path) -> None:
    result = run_cli("ui")
    assert result.returncode == 3
    assert result.stderr.startswith("hive: error: the Hive daemon is not running")
    assert "Traceback" not in result.stderr


LOAD = """
    version: "1"
    services:
      busy:
        runner: {type: script, script: {run: "echo spinning; while :; do :; done"}}
      quiet:
        runner: {type: script, script: {run: "echo quiet line one; echo a needle in quiet; exec sleep 1000"}}
      web:
        runner: {type: script, script: {run: "echo hello from web; exec sleep 1000"}}
"""


def _percent(cell: str | None) -> float:
    return float(cell.rstrip("%")) if cell and cell.endswith("%") else -1.0


async def test_dashboard_cpu_memory_and_merged_log_search(daemon: DaemonProcess, home: Path) -> None:
    root = write_project(home / "load", LOAD)
    with BlockingClient(daemon.socket) as client:
        client.add_source(root)
        client.start_source("load")
    app = Dashboard(str(daemon.socket))
    async with app.run_test(size=(160, 50)) as pilot:
        # CPU: the spinning shell is busy, the sleeper idle; memory for each running one.
        await wait_until(lambda: _percent(_cell(app, "load:busy", "cpu")) > 5, timeout=30, what="busy's CPU")
        await wait_until(lambda: _percent(_cell(app, "load:quiet", "cpu")) >= 0, what="quiet's CPU")
        assert _percent(_cell(app, "load:quiet", "cpu")) < _percent(_cell(app, "load:busy", "cpu"))
        for fqn in ("load:busy", "load:quiet", "load:web"):
            assert (_cell(app, fqn, "mem") or "").endswith("MiB"), fqn

        # Merged: every service's lines, each with its name.
        log = app.query_one("#logs", Log)
        await pilot.press("m")
        await wait_until(lambda: {"load:quiet | a needle in quiet", "load:web | hello from web"}
                         <= {line.partition(" ")[2] for line in log.lines}, what="merged lines")
        assert "all services" in str(log.border_title)

        # Search: only matching lines (any case); a pattern that does not compile keeps the last.
        await pilot.press("f", *"NEEDLE")
        await wait_until(lambda: len(log.lines) == 1, what="one matching line")
        assert log.lines[0].endswith("load:quiet | a needle in quiet")
        await pilot.press("[")
        assert "not a regular expression" in str(app.query_one("#log-search").border_title)
        assert len(log.lines) == 1
        await pilot.press("escape")
        await wait_until(lambda: any("hello from web" in line for line in log.lines), what="all lines back")

        # The service filter narrows the merged pane too.
        await pilot.press("slash", *"web", "enter")
        await wait_until(lambda: all("load:web |" in line for line in log.lines) and len(log.lines) > 0,
                         what="only web's lines")
        await pilot.press("escape")

        # Back to the selected service's lines alone, without prefixes.
        await pilot.press("m")
        await wait_until(lambda: len(log.lines) > 0 and not any(" | " in line for line in log.lines),
                         what="one service's lines")
        assert app.selected is not None and app.selected in str(log.border_title)
