"""Helpers the tests share: start a real daemon, run the real CLI, wait with deadlines."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


class StartFailed(Exception):
    pass


@dataclass
class DaemonProcess:
    home: Path
    process: subprocess.Popen[bytes]
    socket: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit; SIGKILL if it hangs (and say so)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"daemon did not stop within {timeout} s") from None
        return self.process.returncode

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def read_ready_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def start_daemon(
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    preexec: Callable[[], None] | None = None,
    pass_fds: tuple[int, ...] = (),
    argv_prefix: list[str] | None = None,
) -> DaemonProcess:
    """Run ``python -m hive.daemon --foreground`` and wait until it says it is ready."""
    read_end, pipe_write = os.pipe()
    # Keep the ready pipe off the low fds that socket activation hands out from 3.
    write_end = fcntl.fcntl(pipe_write, fcntl.F_DUPFD_CLOEXEC, 20)
    os.close(pipe_write)
    stderr_path = home / f"daemon-{time.monotonic_ns()}.stderr"
    full_env = dict(os.environ)
    full_env["HIVE_HOME"] = str(home)
    full_env.update(env or {})
    argv = [*(argv_prefix or []), sys.executable, "-m", "hive.daemon", "--home", str(home),
            "--foreground", "--ready-fd", str(write_end)]
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=(write_end, *pass_fds),
            env=full_env,
            preexec_fn=preexec,
        )
    os.close(write_end)
    try:
        line = read_ready_line(read_end, timeout)
    finally:
        os.close(read_end)
    if not line.startswith("ready "):
        process.kill()
        process.wait()
        raise StartFailed(line or stderr_path.read_text(errors="replace"))
    return DaemonProcess(home, process, Path(line.removeprefix("ready ")), stderr_path)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``hive`` command, as a user runs it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hive", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input.decode() if input is not None else None,
    )


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Re-check ``condition`` until it is truthy or the deadline passes.

    For things no event announces (a file appearing, a process gone); tests that
    can subscribe to an event do that instead.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)  # wait-ok: re-check interval under a deadline
        delay = min(delay * 2, 0.1)


def write_project(directory: Path, yaml_text: str, name: str = "hive.yaml") -> Path:
    """A project directory with a hive.yaml (dedented), ready for `hive up`."""
    import textwrap

    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(textwrap.dedent(yaml_text).lstrip())
    return directory


def pids_of_service(fqn: str, home: Path | None = None) -> list[int]:
    """Processes whose environment says they belong to ``fqn`` (what a user would grep), of
    the daemon of ``home`` (default: this test's ``HIVE_HOME``; tests run in parallel, and
    many name their project p)."""
    import psutil

    wanted = str(home) if home is not None else os.environ.get("HIVE_HOME")
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            env = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if wanted is not None and env.get("HIVE_HOME") != wanted:
            continue
        if env.get("HIVE_SERVICE_FQN") == fqn and process.status() != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


async def wait_until(condition: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """``wait_for`` for async tests: re-checks without blocking the event loop."""
    import anyio

    delay = 0.005
    try:
        with anyio.fail_after(timeout):
            while True:
                value = condition()
                if value:
                    return value
                await anyio.sleep(delay)  # wait-ok: re-check interval under a deadline
                delay = min(delay * 2, 0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def install_package(directory: Path, module: str) -> None:
    """pip-install the package in ``directory`` (a third-party runner or plugin under
    tests/) into the test environment, as a user would; again if what is installed lacks
    an entry point its pyproject.toml declares (an older copy)."""
    import importlib.util
    import tomllib

    from hive.entry_points import entry_points

    declared = tomllib.loads((directory / "pyproject.toml").read_text())["project"].get("entry-points", {})

    def current() -> bool:
        importlib.invalidate_caches()
        return importlib.util.find_spec(module) is not None and all(
            set(names) <= {entry.name for entry in entry_points(group)} for group, names in declared.items()
        )

    if current():
        return
    # One pip at a time: test workers run in parallel, and two builds of one directory collide.
    with open(Path(sys.prefix) / ".hive-tests-pip.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():
            return
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(directory)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
    importlib.invalidate_caches()


@contextlib.contextmanager
def temporary_user(*, supplementary: bool = False) -> Iterator[tuple[pwd.struct_passwd, str]]:
    """A real user and a group made for this run, removed afterwards: (user, group name).

    The group is the user's primary group, or with ``supplementary`` only a supplementary
    one (the user gets a primary group of its own). Names are unique per run, so two
    suites (or a bench and a suite) running at once never share or delete each other's.
    Needs root and the shadow tools; callers skip otherwise (see ``can_create_users``)."""
    tag = f"{os.getpid():x}{secrets.token_hex(3)}"
    user, group = f"hvu{tag}", f"hvg{tag}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        membership = ["-U", "-G", group] if supplementary else ["-N", "-g", group]
        subprocess.run(["useradd", "-M", *membership, "-s", "/usr/sbin/nologin", user],
                       check=True, capture_output=True)
        try:
            yield pwd.getpwnam(user), group
        finally:
            subprocess.run(["userdel", user], capture_output=True, check=False)
            if supplementary:  # useradd -U made a group named after the user
                subprocess.run(["groupdel", user], capture_output=True, check=False)
    finally:
        subprocess.run(["groupdel", group], capture_output=True, check=False)


def can_create_users() -> str | None:
    """Why ``temporary_user`` cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "creating users and switching to them needs root"
    for tool in ("groupadd", "useradd", "userdel", "groupdel"):
        if shutil.which(tool) is None:
            return f"{tool} is needed to create the test user"
    return None


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP, below the kernel's ephemeral range.

    A port the kernel hands out for port 0 may be taken again, between this probe and the
    bind of the server it is for, by any outgoing connection of a test running beside
    this one (the tests run on several workers). Below the range, only another test's
    own choice can take it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
