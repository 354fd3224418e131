"""Shared fixtures: a private HIVE_HOME and a real daemon process on a real socket."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonProcess, start_daemon


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home() -> Iterator[Path]:
    """A short HIVE_HOME (socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hive_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every client in this test (CLI, libraries) at ``home``."""
    monkeypatch.setenv("HIVE_HOME", str(home))
    monkeypatch.delenv("HIVE_SOCKET", raising=False)
    return home


@pytest.fixture
def daemon(hive_env: Path) -> Iterator[DaemonProcess]:
    """A daemon running in the foreground as a child of the test."""
    process = start_daemon(hive_env)
    try:
        yield process
    finally:
        process.stop()


def pytest_configure(config: pytest.Config) -> None:
    # Children the tests spawn find the project without an install step of their own.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")
