"""Core-plugin tests: the plugins of tests/third_party_plugin, installed with pip, loaded by
real daemons whose config.toml each test writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support import DaemonProcess, install_package, start_daemon

PACKAGE = Path(__file__).parent.parent / "third_party_plugin"


@pytest.fixture(scope="session", autouse=True)
def installed() -> None:
    install_package(PACKAGE, "hive_test_plugins")


class StartWith(Protocol):
    def __call__(self, config: str, env: dict[str, str] | None = None) -> DaemonProcess: ...


@pytest.fixture
def project_dir(home: Path) -> Path:
    return home / "proj"


@pytest.fixture
def start_with(hive_env: Path) -> Iterator[StartWith]:
    """``start_with(config_toml, env=...)``: a daemon whose config.toml is that text."""
    started: list[DaemonProcess] = []

    def start(config: str, env: dict[str, str] | None = None) -> DaemonProcess:
        (hive_env / "config.toml").write_text(config)
        daemon = start_daemon(hive_env, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def records(path: Path) -> list[dict[str, Any]]:
    """What the recorder plugin wrote."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorder_table(path: Path, *, name: str = "recorder", label: str = "recorder", extra: str = "",
                   settings: str = "") -> str:
    return (f'[plugins.{name}]\n{extra}\n[plugins.{name}.settings]\npath = "{path}"\n'
            f'label = "{label}"\n{settings}\n')
