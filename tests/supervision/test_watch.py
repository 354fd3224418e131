"""`hive up --watch`: an edit under the project restarts its services once (a burst of
edits is one restart); an ignored path restarts nothing; Ctrl-C ends it with 130."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive_client import BlockingClient
from tests.support import DaemonProcess, write_project

PROJECT = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


class Watcher:
    """A running `hive up --watch`, read line by line under a deadline."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hive", "up", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []

    def line_with(self, text: str, timeout: float = 20.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            assert ready, f"no line with {text!r} in time; got {self.lines}"
            line = self.process.stdout.readline()
            assert line, f"`hive up --watch` ended: {self.lines} {self.process.stderr.read() if self.process.stderr else ''}"
            self.lines.append(line.rstrip("\n"))
            if text in line:
                return line.rstrip("\n")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(15)


@pytest.fixture
def project(daemon: DaemonProcess, home: Path) -> Path:
    root = write_project(home / "wp", PROJECT)
    (root / "src").mkdir()
    (root / "tmp").mkdir()
    (root / "src" / "app.py").write_text("print('v1')\n")
    return root


@pytest.fixture
def watcher(project: Path) -> Iterator[Watcher]:
    running = Watcher(str(project), "--watch", "--ignore", "tmp/*", "--ignore", "*.log", "--debounce", "200")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)


def _pid(daemon: DaemonProcess) -> int | None:
    with BlockingClient(daemon.socket) as client:
        return client.get_service_status("wp:web").pid


def test_an_edit_restarts_once_and_ignored_paths_do_not(daemon: DaemonProcess, project: Path, watcher: Watcher) -> None:
    watcher.line_with("wp:web: running")
    watcher.line_with("watching ")
    first = _pid(daemon)
    assert first is not None

    # A burst: three writes to two files, one restart.
    (project / "src" / "app.py").write_text("print('v2')\n")
    (project / "src" / "util.py").write_text("X = 1\n")
    (project / "src" / "app.py").write_text("print('v3')\n")
    line = watcher.line_with("restarted")
    assert line == "2 files changed (src/app.py, src/util.py): restarted wp:web"
    second = _pid(daemon)
    assert second not in (None, first)

    # Ignored paths (by a glob from the root, and by name anywhere) first, then one edit:
    # the next batch names the edit alone.
    (project / "tmp" / "scratch.txt").write_text("x")
    (project / "src" / "debug.log").write_text("x")
    (project / "src" / "app.py").write_text("print('v4')\n")
    line = watcher.line_with("restarted")
    assert line == "1 file changed (src/app.py): restarted wp:web"
    assert _pid(daemon) not in (None, first, second)
    assert sum("restarted" in seen for seen in watcher.lines) == 2
    assert not [seen for seen in watcher.lines if "changed" in seen and ("tmp/" in seen or ".log" in seen)]

    assert watcher.interrupt() == 130
    assert watcher.process.stderr is not None
    assert watcher.process.stderr.read() == ""


def test_watch_json_lines(daemon: DaemonProcess, project: Path) -> None:
    running = Watcher(str(project), "--watch", "--json", "--debounce", "100")
    try:
        assert json.loads(running.line_with("\"source\""))["failed"] == []
        watching = json.loads(running.line_with("\"watching\""))
        assert watching == {"watching": [str(project)], "services": ["wp:web"]}
        (project / "src" / "app.py").write_text("print('v2')\n")
        batch = json.loads(running.line_with("\"watch\""))
        assert batch == {"watch": "1 file changed (src/app.py): restarted wp:web", "ok": True}
        code = running.interrupt()
        assert code == 130, running.process.stderr.read() if running.process.stderr else ""
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)


def test_watch_path_must_exist(daemon: DaemonProcess, project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hive", "up", str(project), "--watch", "--watch-path", str(project / "nope")],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "nope" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


KEYED = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        watch: {paths: [src], ignore: ["*.tmp"], debounce: 100ms}
      worker:
        runner: {type: script, script: {run: "exec sleep 1000"}}
        build: {command: "cat lib/conf > built.txt && ! grep -q broken lib/conf", when: always}
        watch: {paths: [lib], action: rebuild}
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


def _pids(daemon: DaemonProcess) -> dict[str, int | None]:
    with BlockingClient(daemon.socket) as client:
        return {s.name: s.pid for s in client.list_services("kp")}


def test_watch_keys_in_hive_yaml_restart_or_rebuild_their_service(daemon: DaemonProcess, home: Path) -> None:
    root = write_project(home / "kp", KEYED)
    (root / "src").mkdir()
    (root / "lib").mkdir()
    (root / "lib" / "conf").write_text("v1\n")
    running = Watcher(str(root), "--watch")
    try:
        watching = running.line_with("watching ")
        assert "src" in watching and "lib" in watching
        before = _pids(daemon)
        assert (root / "built.txt").read_text() == "v1\n"

        # web: its own paths and ignore globs; nobody else restarts.
        (root / "src" / "scratch.tmp").write_text("x")
        (root / "src" / "app.py").write_text("print('v2')\n")
        assert running.line_with("restarted") == "1 file changed (src/app.py): restarted kp:web"
        after_web = _pids(daemon)
        assert after_web["web"] not in (None, before["web"])
        assert (after_web["worker"], after_web["idle"]) == (before["worker"], before["idle"])

        # worker: rebuilt, then restarted.
        (root / "lib" / "conf").write_text("v2\n")
        assert running.line_with("restarted") == "1 file changed (lib/conf): rebuilt and restarted kp:worker"
        assert (root / "built.txt").read_text() == "v2\n"
        after_build = _pids(daemon)
        assert after_build["worker"] not in (None, before["worker"])

        # A build that fails: no restart, the reason, and watching goes on.
        (root / "lib" / "conf").write_text("broken\n")
        line = running.line_with("build failed")
        assert line.startswith("1 file changed (lib/conf): kp:worker not restarted, its build failed: ")
        assert "exit code 1" in line
        assert _pids(daemon)["worker"] == after_build["worker"]
        (root / "lib" / "conf").write_text("v3\n")
        assert running.line_with("restarted").endswith("rebuilt and restarted kp:worker")

        # idle has no watch: of its own and no --watch-path was given: it was never restarted.
        assert _pids(daemon)["idle"] == before["idle"]
        assert running.interrupt() == 130
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)


def test_watch_keys_that_cannot_work_are_one_clear_error(daemon: DaemonProcess, home: Path) -> None:
    root = write_project(home / "bad", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            watch: {action: rebuild, debounce: soon}
        """)
    result = subprocess.run([sys.executable, "-m", "hive", "up", str(root), "--watch"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "services.web.watch.debounce: invalid duration 'soon'" in result.stderr
    assert "Traceback" not in result.stderr

    missing = write_project(home / "gone", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            watch: {paths: [nowhere]}
        """)
    result = subprocess.run([sys.executable, "-m", "hive", "up", str(missing), "--watch"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"gone:web: watch path {missing / 'nowhere'} does not exist" in result.stderr
    assert "services.web.watch.paths" in result.stderr


def test_watch_keys_are_no_reason_to_restart_on_reload(tmp_path: Path) -> None:
    from hive.config import load_project, service_fingerprint

    def fingerprint(watch: str) -> bytes:
        write_project(tmp_path, f"""
            version: "1"
            services:
              web:
                runner: {{type: script, script: {{run: "exec sleep 1000"}}}}
                {watch}
            """)
        return service_fingerprint(load_project(tmp_path, environ={}).config.services["web"])

    assert fingerprint("") == fingerprint("watch: {paths: [.], debounce: 1s}") == fingerprint("watch: .")
    assert load_project(tmp_path, environ={}).config.services["web"].watch is not None
