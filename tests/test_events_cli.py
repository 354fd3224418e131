"""`hive events` follows the bus live, filtered, as text or JSON lines."""

from __future__ import annotations

import json
import select
import subprocess
import sys

from hive_client import BlockingClient
from tests.support import DaemonProcess, wait_for


def _read_line(process: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "no output from `hive events` in time"
    return process.stdout.readline()


def _follow(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hive", "events", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_events_follow_json(daemon: DaemonProcess) -> None:
    follower = _follow("--json", "--kind", "daemon_reloaded", "--since", "0")
    try:
        with BlockingClient(daemon.socket) as client:
            # --since 0 replays nothing of this kind yet; a reload comes through live.
            client.reload()
            event = json.loads(_read_line(follower))
        assert event["type"] == "daemon_reloaded"
        assert event["ok"] is True
        assert event["seq"] >= 2
    finally:
        follower.terminate()
        follower.wait(10)


def test_events_text_and_replay(daemon: DaemonProcess) -> None:
    follower = _follow("--since", "0")
    try:
        line = _read_line(follower)
        assert "#1 daemon_started" in line
    finally:
        follower.terminate()
        follower.wait(10)


def test_events_ends_when_daemon_stops(daemon: DaemonProcess) -> None:
    follower = _follow()
    try:
        with BlockingClient(daemon.socket) as client:
            # The follower's subscription is in place once the daemon counts two clients.
            wait_for(lambda: client.status().clients >= 2, what="the follower to connect")
        daemon.stop()
        out, err = follower.communicate(timeout=10)
        assert "daemon_shutdown" in out
        assert follower.returncode == 0, err
    finally:
        if follower.poll() is None:
            follower.kill()


def test_unknown_kind(daemon: DaemonProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "hive", "events", "-k", "nope"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "unknown event kind" in result.stderr
