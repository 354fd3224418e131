"""Fixtures for the runner tests: a spec factory whose processes are cleaned up even when
a test fails half-way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runners.base import RunSpec
from runners.script import ScriptRunner
from tests.runners.helpers import kill_tagged, make_spec, tag_of

SpecFactory = Callable[..., RunSpec]


@pytest.fixture
def runner() -> ScriptRunner:
    return ScriptRunner()


@pytest.fixture
def spec(home: Path) -> Iterator[SpecFactory]:
    """``spec(command, **fields)``: a RunSpec in ``home``; its processes die with the test."""
    tags: list[str] = []

    def factory(command: str, **fields: Any) -> RunSpec:
        made = make_spec(home, command, **fields)
        tags.append(tag_of(made))
        return made

    yield factory
    for tag in tags:
        kill_tagged(tag)
