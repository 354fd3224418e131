"""In-process supervision tests: the real supervisor and sources, a fake runner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hive.daemon.home import HiveHome
from hive.daemon.store import StateStore
from tests.machine.harness import FakeRunner


@pytest.fixture
def hive_home(tmp_path: Path) -> Path:
    HiveHome(tmp_path / "home").prepare()
    return tmp_path / "home"


@pytest.fixture
async def store() -> AsyncIterator[StateStore]:
    opened = await StateStore.open(Path(":memory:"))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def fake() -> FakeRunner:
    return FakeRunner()
