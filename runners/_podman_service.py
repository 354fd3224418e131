"""podman's API socket: ``podman system service``, started by Hive when nothing answers.

podman has no daemon of its own; its Docker-compatible API is served by ``podman system
service``. The podman runner talks to it like the docker runner talks to dockerd, and,
at podman's default socket only, starts it when no one answers there (a socket of the
block's or of ``[runners.podman]`` is someone else's to run: Hive only connects to it).

- **Where.** podman's own default, what ``podman --remote`` and the ``podman.socket``
  unit use: root: ``/run/podman/podman.sock``; another user:
  ``$XDG_RUNTIME_DIR/podman/podman.sock``. ``CONTAINER_HOST=unix://PATH`` names another.
- **One per socket, whatever the number of containers or daemons.** The start is made
  under an exclusive ``flock`` on ``<socket>.lock``, after asking the socket once more:
  two daemons (or the daemon's loop and its engine thread) never start two services.
- **Supervised.** ``--time=0``: it never ends by itself. Its own session: a Ctrl-C to the
  daemon does not end it, and it outlives a daemon that dies, like an engine does (the
  next daemon finds it answering). Whoever finds the socket dead starts it again: the
  engine thread on its next connection attempt (after 0.1 s), a request on its
  connection error. Containers do not depend on it (``conmon`` holds each).
- Its stderr goes to ``<socket>.log`` (replaced at each start): the last line is the
  reason given when it does not come up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket as sockets
import subprocess
import threading
import time

import anyio

from .base import RunnerError

__all__ = ["PodmanService", "default_podman_socket"]

log = logging.getLogger("hive.runners.container")

# How long a started service gets to answer on its socket.
START_TIMEOUT = 30.0


def default_podman_socket() -> str:
    """podman's default API socket (see the module docstring)."""
    host = os.environ.get("CONTAINER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    if os.geteuid() == 0:
        return "/run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return os.path.join(runtime, "podman", "podman.sock")


def answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class PodmanService:
    """Starts ``podman system service`` on one socket path when it does not answer."""

    _all: dict[str, PodmanService] = {}
    _all_lock = threading.Lock()

    @classmethod
    def of(cls, path: str, binary: str = "podman") -> PodmanService:
        with cls._all_lock:
            service = cls._all.get(path)
            if service is None:
                service = cls._all[path] = cls(path, binary)
            return service

    def __init__(self, path: str, binary: str) -> None:
        self.path = path
        self.binary = binary
        self._lock = threading.Lock()  # one start at a time in this process
        self.started = 0  # how many services this process started (tests, logs)

    async def ensure(self) -> None:
        """Return once the socket answers, starting the service if it does not;
        RunnerError saying why it could not be started."""
        await anyio.to_thread.run_sync(self._ensure, abandon_on_cancel=True)

    def _ensure(self) -> None:
        with self._lock:
            if answers(self.path):
                return
            directory = os.path.dirname(self.path) or "."
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise RunnerError(f"cannot start podman's API service at {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another daemon may be starting it
                if not answers(self.path):
                    self._start()
            finally:
                os.close(lock)

    def _start(self) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise RunnerError(f"{self.binary} is not installed (no `{self.binary}` on PATH)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a service that died
        log_path = f"{self.path}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [binary, "system", "service", "--time=0", f"unix://{self.path}"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                # It outlives this daemon: in the daemon's directory, once that is removed,
                # conmon cannot start a container ("Failed to get working directory").
                cwd="/",
            )
        self.started += 1
        log.warning("podman's API service did not answer at %s: started it (pid %d)", self.path, process.pid)
        # Reaped when it ends (a thread, not a process); whoever needs it next starts another.
        threading.Thread(target=process.wait, name=f"hive-podman-service {process.pid}", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self.path):
            if process.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise RunnerError(f"podman system service did not start at {self.path}: {_last_line(log_path)}")
            time.sleep(0.02)  # wait-ok: a socket has no event for its first listen


def _last_line(path: str) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as log_file:
        lines = [line.strip() for line in log_file.read()[-4096:].decode(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1]
    return "it gave no reason"
