"""Shared fixtures: a private HIVE_HOME and a real daemon process on a real socket."""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.report import collect, rows, take_recorded, write_report
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


# Tests run in parallel (pytest-xdist: ``-n auto --dist loadgroup`` in pyproject.toml), but
# those on a part the machine has once run one at a time, on one worker: the container
# engines (container names are per source, and many tests use the source p) and the fleet's
# etcd members and network namespaces (lease timings that a busy core stretches).
_ENGINE_WORDS = ("require_engine", "IMAGE", "docker", "podman", "compose", "engine")


def _uses_engines(item: pytest.Function) -> bool:
    """A test of a module that imports tests.engines, whose code, fixtures or parameters
    name an engine (a test there that names none runs in parallel with the rest)."""
    texts = [inspect.getsource(item.function), str(getattr(item, "callspec", None) and item.callspec.params)]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        texts += [inspect.getsource(definition.func) for definition in definitions
                  if Path(inspect.getfile(definition.func)) == Path(item.path)]
    return any(word in text for text in texts for word in _ENGINE_WORDS)


@functools.cache
def _imports_engines(path: Path) -> bool:
    return "tests.engines" in path.read_text()


def shared_part(item: pytest.Item) -> str | None:
    """The xdist group of a test: the shared part it uses, or None."""
    module = getattr(item, "module", None)
    if module is None or not isinstance(item, pytest.Function):
        return None
    if module.__name__.startswith("tests.fleet."):
        return "fleet"
    if _imports_engines(Path(item.path)) and _uses_engines(item):
        return "engines"
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = shared_part(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config: pytest.Config) -> None:
    # Children the tests spawn find the project without an install step of their own.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = root + os.pathsep + os.environ.get("PYTHONPATH", "")


# The reliability suite's table (tests/reliability/report.py): rows recorded by a test ride
# on its report, from the worker that ran it to the process that prints the summary.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    report.user_properties += [("reliability", fields) for fields in take_recorded()]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == "reliability":
            collect(tuple(value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = rows()
    if not found:
        return
    terminalreporter.section("reliability")
    width = max(len(r.check) for r in found)
    for r in found:
        terminalreporter.write_line(f"{r.area:<10} {r.check:<{width}}  {r.tried:<22} {r.held}  lost: {r.lost}")
    path = write_report(found)
    if path is not None:
        terminalreporter.write_line(f"table written to {path}")
