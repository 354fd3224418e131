"""Real database and gRPC servers for the protocol health checks, each started by the test in
a private directory on a free port (no system service is used).

Debian's packages provide them (``scripts/ci-servers.sh`` installs them). Where a server
binary is missing a test skips with the reason, and under CI=true fails instead. As root the
servers run as their packages' own users (PostgreSQL and MariaDB refuse to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest

INSTALL_HINT = "sudo scripts/ci-servers.sh installs it"
GRPC_SERVER = Path(__file__).with_name("grpc_health_server.py")


def require(program: str, path: str | None) -> str:
    """``path``, or skip (fail under CI=true) saying that ``program`` is missing."""
    if path is None:
        reason = f"{program} is not installed ({INSTALL_HINT})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def find(program: str, *patterns: str) -> str | None:
    found = shutil.which(program)
    if found is None:
        for pattern in patterns:
            matches = sorted(glob.glob(pattern))
            if matches:
                return matches[-1]
    return found


@dataclass(frozen=True)
class RunAs:
    """Who a server runs as: the test's user, or (as root) the package's user."""

    user: int | None = None
    group: int | None = None

    @classmethod
    def for_package(cls, name: str) -> RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = pwd.getpwnam("nobody")
        return cls(entry.pw_uid, entry.pw_gid)

    def private_dir(self, prefix: str) -> Path:
        """A new directory under /tmp that the server's user owns (pytest's tmp_path is
        private to the test's user)."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        if self.user is not None:
            os.chown(path, self.user, self.group if self.group is not None else -1)
        return path

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                user=self.user, group=self.group, **kwargs)  # type: ignore[call-overload]
        assert result.returncode == 0, f"{argv[0]} failed: {result.stdout}{result.stderr}"
        return result


@asynccontextmanager
async def server_process(argv: list[str], run_as: RunAs, log: Path) -> AsyncIterator[anyio.abc.Process]:
    """Run ``argv`` for the block (its output in ``log``), then kill it and wait for it."""
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           user=run_as.user, group=run_as.group)
    finally:
        os.close(out)
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


# ---- redis ---------------------------------------------------------------------------------


def redis_argv(port: int, directory: Path, *extra: str) -> list[str]:
    binary = require("redis-server", find("redis-server"))
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
            "--unixsocket", "", *extra]


# ---- postgresql ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataDir:
    path: Path
    run_as: RunAs


@contextmanager
def postgres_cluster() -> Iterator[DataDir]:
    """An initialised PostgreSQL cluster (initdb, trust auth) in a private directory."""
    initdb = require("initdb (postgresql)", find("initdb", "/usr/lib/postgresql/*/bin/initdb"))
    run_as = RunAs.for_package("postgres")
    root = run_as.private_dir("hive-pg-")
    try:
        run_as.run([initdb, "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"])
        yield DataDir(root, run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postgres_argv(cluster: DataDir, port: int) -> list[str]:
    postgres = require("postgres", find("postgres", "/usr/lib/postgresql/*/bin/postgres"))
    return [postgres, "-D", str(cluster.path / "data"), "-p", str(port), "-k", str(cluster.path),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]


# ---- mariadb -------------------------------------------------------------------------------


@contextmanager
def mariadb_datadir() -> Iterator[DataDir]:
    """An initialised MariaDB data directory in a private directory."""
    install = require("mariadb-install-db (mariadb-server)",
                      find("mariadb-install-db") or find("mysql_install_db"))
    run_as = RunAs.for_package("mysql")
    root = run_as.private_dir("hive-maria-")
    user = pwd.getpwuid(run_as.user).pw_name if run_as.user is not None else pwd.getpwuid(os.geteuid()).pw_name
    try:
        run_as.run([install, "--no-defaults", f"--datadir={root / 'data'}", f"--user={user}",
                    "--auth-root-authentication-method=normal", "--skip-test-db"])
        yield DataDir(root, run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mariadb_argv(datadir: DataDir, port: int) -> list[str]:
    server = require("mariadbd (mariadb-server)", find("mariadbd", "/usr/sbin/mariadbd") or find("mysqld", "/usr/sbin/mysqld"))
    return [server, "--no-defaults", f"--datadir={datadir.path / 'data'}", f"--port={port}",
            "--bind-address=127.0.0.1", f"--socket={datadir.path / 'mysqld.sock'}",
            f"--pid-file={datadir.path / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=16M"]


# ---- grpc ----------------------------------------------------------------------------------


def grpc_argv(port: int) -> list[str]:
    try:
        import grpc_health.v1  # noqa: F401
    except ImportError:
        require("grpcio-health-checking (the test extra)", None)
    return [sys.executable, str(GRPC_SERVER), str(port)]
