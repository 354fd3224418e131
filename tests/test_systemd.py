"""sd_notify and socket activation, against sockets the test owns."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import time
from pathlib import Path

from hive_client import BlockingClient
from tests.support import start_daemon

WATCHDOG_USEC = 200_000  # systemd would expect a ping at least every 0.2 s


def _notify_socket(home: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(home / "notify.sock"))
    sock.settimeout(10)
    return sock


def _receive(sock: socket.socket) -> tuple[float, set[str]]:
    data = sock.recv(4096)
    return time.monotonic(), set(data.decode().splitlines())


def test_ready_watchdog_and_stopping(home: Path) -> None:
    notify = _notify_socket(home)
    daemon = start_daemon(
        home,
        env={"NOTIFY_SOCKET": str(home / "notify.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    try:
        messages: list[tuple[float, set[str]]] = []
        while not any("READY=1" in fields for _, fields in messages):
            messages.append(_receive(notify))
        ready = next(fields for _, fields in messages if "READY=1" in fields)
        assert f"MAINPID={daemon.pid}" in ready

        # The watchdog keeps pinging at half the interval systemd asked for.
        pings: list[float] = []
        while len(pings) < 8:
            when, fields = _receive(notify)
            if "WATCHDOG=1" in fields:
                pings.append(when)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        expected = WATCHDOG_USEC / 2_000_000
        assert expected * 0.5 < statistics.median(gaps) < expected * 2, gaps
        assert max(gaps) < WATCHDOG_USEC / 1_000_000, "a ping came later than systemd would tolerate"

        os.kill(daemon.pid, signal.SIGTERM)
        seen: set[str] = set()
        while "STOPPING=1" not in seen:
            seen |= _receive(notify)[1]
        assert daemon.process.wait(15) == 0
    finally:
        notify.close()
        if daemon.alive():
            daemon.kill9()


def test_reload_notifies_reloading(home: Path) -> None:
    notify = _notify_socket(home)
    daemon = start_daemon(home, env={"NOTIFY_SOCKET": str(home / "notify.sock")})
    try:
        while "READY=1" not in _receive(notify)[1]:
            pass
        os.kill(daemon.pid, signal.SIGHUP)
        seen: set[str] = set()
        while "RELOADING=1" not in seen:
            seen |= _receive(notify)[1]
        while "READY=1" not in seen:
            seen |= _receive(notify)[1]
    finally:
        notify.close()
        daemon.stop()


def test_socket_activation(home: Path) -> None:
    """systemd's hive.socket hands the daemon a listening socket on fd 3."""
    path = home / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    fd = listener.fileno()

    def socket_on_fd3() -> None:
        # Runs in the child before the fds outside pass_fds are closed.
        os.dup2(fd, 3)

    # As systemd does it: the socket on fd 3, LISTEN_PID the daemon's own pid (`sh`
    # sets it to its pid, then execs the daemon in place).
    daemon = start_daemon(
        home,
        env={"LISTEN_FDS": "1"},
        preexec=socket_on_fd3,
        pass_fds=(3,),
        argv_prefix=["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"],
    )
    listener.close()
    try:
        assert daemon.socket == path
        with BlockingClient(path, timeout=10) as client:
            status = client.status()
        assert status.pid == daemon.pid
        assert status.socket == str(path)
        assert not (home / "hive.sock").exists()
    finally:
        daemon.stop()
    # The socket belongs to systemd: the daemon leaves it in place.
    assert path.exists()
