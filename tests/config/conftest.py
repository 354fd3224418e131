"""Helpers for the hive.yaml tests: write a project directory and load it."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from hive.config import ConfigError, LoadedProject, load_project

WriteProject = Callable[..., Path]


@pytest.fixture
def write_project(tmp_path: Path) -> WriteProject:
    """write_project(yaml_text, files={".env": "A=1"}) -> the project dir."""

    def write(
        text: str, *, files: Mapping[str, str] | None = None, name: str = "hive.yaml"
    ) -> Path:
        config = tmp_path / name
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        for file_name, content in (files or {}).items():
            (tmp_path / file_name).write_text(content, encoding="utf-8")
        return tmp_path

    return write


LoadText = Callable[..., LoadedProject]


@pytest.fixture
def load_text(write_project: WriteProject) -> LoadText:
    """load_text(yaml_text, environ={...}, files={...}) -> LoadedProject (environ defaults to {})."""

    def load(
        text: str,
        *,
        environ: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
    ) -> LoadedProject:
        root = write_project(text, files=files)
        return load_project(root, environ=environ if environ is not None else {})

    return load


ErrorsOf = Callable[..., list[str]]


@pytest.fixture
def errors_of(load_text: LoadText) -> ErrorsOf:
    """The printed errors of an invalid config (fails the test if it loads)."""

    def errors(text: str, **kwargs: object) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_text(text, **kwargs)
        return [str(issue) for issue in caught.value.issues]

    return errors
