"""A full or nearly full disk under HIVE_HOME and the services' output.

- A service that writes steadily keeps running while HIVE_HOME's file system is full
  (30 s, ``HIVE_DISK_FULL_SECONDS``), through a ``kill -9`` of the daemon and the start
  of the next one; the lines that could not be stored are counted, `hive status` and
  `hive logs` say why, and logging to disk resumes once there is room.
- Retention shrinks when free space runs low: old log files go, oldest first, and the
  service's log says so.

Real daemons, a real tmpfs as HIVE_HOME (root only: skipped otherwise, with the reason),
a real Python service whose ``print`` raises when its stdout cannot be written.
"""

from __future__ import annotations

import functools
import os
import re
import select
import time
from pathlib import Path

from hive_client import BlockingClient, ServiceInfo
from hive_client.protocol import DaemonStatus
from tests.reliability.report import record
from tests.reliability.test_faults import Filler, kill_leftovers, small_filesystem
from tests.support import run_cli, start_daemon, wait_for, write_project

FULL_SECONDS = float(os.environ.get("HIVE_DISK_FULL_SECONDS", "30"))

WRITER = """\
import itertools, time
for i in itertools.count():
    print(f"line {i}", flush=True)
    time.sleep(0.005)
"""

PROJECT = """
    version: "1"
    services:
      writer:
        runner: {type: script, script: {run: "python3 -u writer.py"}}
      crasher:
        runner:
          type: script
          script:
            run: |
              #!/bin/sh
              echo "crashing"
              exit 3
        restart: {policy: always, delay: 100ms, max_delay: 300ms, jitter: false}
"""

FLOOD = """\
import itertools, time
pad = "x" * 200
for i in itertools.count():
    print(f"flood {i} {pad}", flush=True)
    if i % 10 == 0:
        time.sleep(0.001)
"""

FLOOD_PROJECT = """
    version: "1"
    services:
      flood:
        runner: {type: script, script: {run: "python3 -u flood.py"}}
"""


def _status(socket: Path) -> DaemonStatus:
    with BlockingClient(socket, timeout=30) as client:
        return client.status()


def _service(socket: Path, fqn: str) -> ServiceInfo:
    with BlockingClient(socket, timeout=30) as client:
        return {info.fqn: info for info in client.list_services()}[fqn]


def _messages(socket: Path, fqn: str, lines: int = 2000) -> list[str]:
    with BlockingClient(socket, timeout=30) as client:
        return [line.message for line in client.get_logs(fqn, lines=lines)]


def _numbers(texts: list[str]) -> list[int]:
    return [int(m.group(1)) for text in texts if (m := re.search(r"\bline (\d+)$", text))]


def _file_numbers(path: Path) -> list[int]:
    try:
        return _numbers(path.read_text(errors="replace").splitlines())
    except FileNotFoundError:
        return []


def _dropped_status(socket: Path) -> DaemonStatus | None:
    status = _status(socket)
    return status if status.log_lines_dropped > 0 and status.log_write_error else None


def _running(socket: Path, fqn: str) -> ServiceInfo | None:
    info = _service(socket, fqn)
    return info if info.state == "running" else None


def _written_past(path: Path, number: int) -> int | None:
    numbers = _file_numbers(path)
    return numbers[-1] if numbers and numbers[-1] > number else None


def test_service_survives_a_full_disk_and_its_lost_lines_are_counted(hive_env: Path, tmp_path: Path) -> None:
    home = hive_env
    with small_filesystem(home, "32m"):
        (home / "config.toml").write_text("[logs]\nkeep_free_bytes = 0\n[restart]\nstart_limit_burst = 0\n")
        project = write_project(tmp_path / "proj", PROJECT)
        (project / "writer.py").write_text(WRITER)
        daemon = start_daemon(home)
        pidfd = -1
        try:
            with BlockingClient(daemon.socket, timeout=60) as client:
                client.add_source(project, name="disk", start=True)
            log_file = home / "logs" / "disk" / "writer.log"
            wait_for(lambda: _written_past(log_file, 10), timeout=30, what="the writer's lines in its log file")
            writer = _service(daemon.socket, "disk:writer")
            assert writer.pid is not None
            pidfd = os.pidfd_open(writer.pid)

            filled = time.monotonic()
            with Filler(home / "filler"):
                # It goes on writing (its print() used to raise ENOSPC and end it at once).
                at_fill = max(_numbers(_messages(daemon.socket, "disk:writer")))
                wait_for(lambda: max(_numbers(_messages(daemon.socket, "disk:writer"))) > at_fill + 200,
                         timeout=30, what="the writer to go on writing on the full disk")
                # Counted, and said why: in the status (API and CLI) and in the service's log.
                full = wait_for(functools.partial(_dropped_status, daemon.socket), timeout=30,
                                what="the status to count the lines not stored")
                assert full is not None and full.log_write_error is not None
                assert "No space left on device" in full.log_write_error, full.log_write_error
                shown = run_cli("status")
                assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
                assert "NOT STORED: No space left on device" in shown.stdout, shown.stdout
                assert "lines not stored" in shown.stdout, shown.stdout
                why = [m for m in _messages(daemon.socket, "disk:writer")
                       if "cannot write the log file" in m]
                assert why and "No space left on device" in why[0], why

                # The daemon killed while the disk is full; the next one adopts the writer
                # and its output is still captured: lines written while no daemon ran too.
                before_kill = max(_numbers(_messages(daemon.socket, "disk:writer")))
                daemon.kill9()
                daemon = start_daemon(home)
                adopted = wait_for(functools.partial(_running, daemon.socket, "disk:writer"), timeout=30,
                                   what="the new daemon to adopt the writer")
                assert adopted is not None and adopted.pid == writer.pid and adopted.restart_count == writer.restart_count
                after = wait_for(lambda: [n for n in _numbers(_messages(daemon.socket, "disk:writer"))
                                          if n > before_kill + 50], timeout=30,
                                 what="the adopted writer's lines in hive logs")
                assert after
                numbers = _numbers(_messages(daemon.socket, "disk:writer", lines=10_000))
                kept = [n for n in numbers if n > before_kill]
                assert kept[0] <= before_kill + 1 + 500, "lines written while no daemon ran were lost"

                # A script service (#!) that crashes is started again on the full disk too: it runs
                # (it used to fail to start, its script file being written again each time).
                ran = _messages(daemon.socket, "disk:crasher").count("crashing")
                wait_for(lambda: _messages(daemon.socket, "disk:crasher").count("crashing") >= ran + 3,
                         timeout=30, what="the #! crasher to run again on the full disk")
                # The rest of the full period: the writer must not exit (its pidfd stays quiet).
                left = FULL_SECONDS - (time.monotonic() - filled)
                ended, _, _ = select.select([pidfd], [], [], max(0.0, left))
                assert not ended, f"the writer exited while the disk was full: {daemon.stderr()[-2000:]}"
                full_for = time.monotonic() - filled
                dropped = _status(daemon.socket).log_lines_dropped
                assert dropped > 0

            # Room again: its lines reach the file again, after a line saying how many were lost.
            mark = max(_numbers(_messages(daemon.socket, "disk:writer")))
            wait_for(lambda: _written_past(log_file, mark), timeout=30,
                     what="the writer's lines to reach its log file again")
            text = log_file.read_text(errors="replace")
            resumed = re.findall(r"can be written again: (\d+) lines since", text)
            assert resumed, text[-3000:]
            assert _status(daemon.socket).log_write_error is None
            info = _service(daemon.socket, "disk:writer")
            assert info.state == "running" and info.pid == writer.pid and info.restart_count == writer.restart_count
            numbers = _file_numbers(log_file)
            missing = numbers[-1] - numbers[0] + 1 - len(set(numbers))
            assert missing > 0, "no line was lost to the full disk: was it full?"
            assert "Traceback" not in daemon.stderr(), daemon.stderr()[-3000:]
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            if daemon.alive():
                daemon.stop()
            kill_leftovers(home)
    print(f"full for {full_for:.0f} s: writer kept pid {writer.pid}; {dropped} lines not stored (counted by the "
          f"daemon that saw space return); {missing} missing from the file")
    record("faults", "service writing steadily, HIVE_HOME full (32 MiB tmpfs)",
           f"full for {full_for:.0f} s, daemon kill -9 meanwhile",
           f"same pid, no restart; adopted with its output captured; {dropped} lines not stored, counted, "
           "cause in status and logs; file logging resumed by itself", "the lines not stored (counted)")


def _rotated(directory: Path, stem: str) -> list[Path]:
    return sorted(directory.glob(f"{stem}.log.*"))


def test_retention_shrinks_when_free_space_runs_low(hive_env: Path, tmp_path: Path) -> None:
    home = hive_env
    with small_filesystem(home, "48m"):
        (home / "config.toml").write_text(
            "[logs]\nmax_file_bytes = 262144\nkeep_files = 5\nkeep_free_bytes = 16777216\n")
        project = write_project(tmp_path / "proj", FLOOD_PROJECT)
        (project / "flood.py").write_text(FLOOD)
        daemon = start_daemon(home)
        logs = home / "logs" / "low"
        try:
            with BlockingClient(daemon.socket, timeout=60) as client:
                client.add_source(project, name="low", start=True)
            wait_for(lambda: len(_rotated(logs, "flood")) == 5, timeout=60,
                     what="five rotated log files while space is plenty")
            # Another program takes the space down to 8 MiB free: below the 16 MiB kept free.
            info = os.statvfs(home)
            hog = home / "hog"
            with open(hog, "wb") as out:
                os.posix_fallocate(out.fileno(), 0, info.f_bavail * info.f_frsize - 8 * 1024 * 1024)
            try:
                # At most the file just rotated out is left besides the current one.
                wait_for(lambda: len(_rotated(logs, "flood")) <= 1, timeout=60,
                         what="the old log files to be removed while space is short")
                notes = [m for m in _messages(daemon.socket, "low:flood", lines=10_000)
                         if "removed old log files" in m]
                assert notes and "free space is low" in notes[0], notes
                assert (logs / "flood.log").exists()
                assert _service(daemon.socket, "low:flood").state == "running"
            finally:
                hog.unlink()
            # Space again: retention grows back to keep_files.
            wait_for(lambda: len(_rotated(logs, "flood")) >= 2, timeout=60,
                     what="rotated files to be kept again once there is room")
        finally:
            if daemon.alive():
                daemon.stop()
            kill_leftovers(home)
    record("faults", "free space below logs.keep_free_bytes (48 MiB tmpfs)", "5 rotated files, 8 MiB left free",
           "old log files removed, oldest first, the service's log says why; kept again once space returned")
