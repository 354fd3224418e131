"""systemd integration without libsystemd: ``sd_notify`` and socket activation.

``$NOTIFY_SOCKET`` is a datagram socket (a path, or ``@name`` in the abstract
namespace); ``$WATCHDOG_USEC`` asks for a keep-alive, which we send at half the
interval; ``$LISTEN_FDS``/``$LISTEN_PID`` hand us listening sockets from fd 3 on.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import anyio

__all__ = ["SD_LISTEN_FDS_START", "Notifier", "listen_fds"]

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends state changes to systemd; every method is a no-op outside systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (
            not watchdog_pid or watchdog_pid == str(os.getpid())
        ):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self.address is None:
            return
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        with contextlib.suppress(OSError):  # systemd went away; nothing to do about it
            self._sock.sendto("\n".join(fields).encode(), target)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half of what systemd asked for."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop, so a stuck loop stops the pings."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def listen_fds(environ: Mapping[str, str] | None = None, *, unset: bool = True) -> list[int]:
    """The file descriptors systemd passed us, if they are meant for this process."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit():
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)
    if unset and environ is None:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    return fds
