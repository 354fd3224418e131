"""Dotenv files and the environment layering of a service (spec S precedence)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive.config import (
    ConfigError,
    EnvironmentSpec,
    RuntimeTemplateError,
    build_environment,
    parse_service_entry,
    read_dotenv_file,
)
from hive.config._templates import parse_dotenv

from .conftest import LoadText


def test_parse_dotenv_rules() -> None:
    """python-dotenv's rules (the issue: ``export`` lines were dropped)."""
    text = """
    # comment
    A=1
      B = two words\t
    C="quoted \\"inner\\" ok"
    D='single ${A}'
    F=a=b
    export G=v
    no_equals_sign
    H=
    I=plain # a comment
    J="line one
    line two"
    K=${A}-${MISSING:-fallback}
    A=override
    """
    assert parse_dotenv(text) == {
        "A": "override",  # later lines win
        "B": "two words",
        "C": 'quoted "inner" ok',
        "D": "single 1",  # python-dotenv expands in single quotes too
        "F": "a=b",
        "G": "v",
        "H": "",
        "I": "plain",
        "J": "line one\n    line two",
        "K": "1-fallback",
    }


def test_an_unreadable_dotenv_line_is_an_error_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("A=1\nE=\"mismatched'\nB=2\n")
    with pytest.raises(ConfigError) as caught:
        read_dotenv_file(tmp_path / "bad.env")
    (issue,) = caught.value.issues
    assert issue.line == 2 and "cannot read" in issue.message


def test_read_dotenv_file(tmp_path: Path) -> None:
    assert read_dotenv_file(tmp_path / "missing.env") == {}
    (tmp_path / "bad.env").write_bytes(b"A=1\nB=\xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_dotenv_file(tmp_path / "bad.env")
    with pytest.raises(ConfigError, match="embedded null byte"):
        read_dotenv_file(tmp_path / "nul\0.env")
    (tmp_path / "dir.env").mkdir()
    with pytest.raises(ConfigError, match="cannot read dotenv file"):
        read_dotenv_file(tmp_path / "dir.env")


PRECEDENCE = """
version: "1"
environment:
  static: {LEVEL: global-static, GS: gs}
  dotenv: {files: [global.env]}
services:
  a:
    runner: {type: script, script: {run: a}}
    environment:
      dotenv: {files: [service.env, service.local.env]}
      static: {LEVEL: service-static}
  b:
    runner: {type: script, script: {run: b}}
"""


def test_precedence(load_text: LoadText) -> None:
    project = load_text(
        PRECEDENCE,
        files={
            "global.env": "LEVEL=global-dotenv\nGD=gd\nGS=from-global-dotenv\nSD=global\n",
            "service.env": "LEVEL=service-dotenv\nSD=service\nGS=from-service-dotenv\n",
            "service.local.env": "SD=service-local\n",
        },
    )
    base = {"LEVEL": "process", "PATH": "/bin", "GD": "process"}
    env_a = build_environment(project, project.config.services["a"], base)
    assert env_a == {
        "LEVEL": "service-static",  # service static beats everything
        "PATH": "/bin",  # the inherited environment is the lowest layer
        "GD": "gd",  # global dotenv beats the process env
        "GS": "from-service-dotenv",  # service dotenv beats global static
        "SD": "service-local",  # later dotenv files win
    }
    env_b = build_environment(project, project.config.services["b"], base)
    assert env_b == {
        "LEVEL": "global-static",  # global static beats global dotenv
        "PATH": "/bin",
        "GD": "gd",
        "GS": "gs",
        "SD": "global",
    }
    # The global scope can come from the HiveConfig or an EnvironmentSpec as well.
    assert build_environment(project.config, project.config.services["b"], base) == env_b
    assert build_environment(None, project.config.services["b"], base) == base


def test_dotenv_is_read_at_call_time(load_text: LoadText) -> None:
    project = load_text(PRECEDENCE, files={"service.env": "SD=first\n"})
    service = project.config.services["a"]
    assert build_environment(project, service, {})["SD"] == "first"
    (project.root / "service.env").write_text("SD=second\n")
    assert build_environment(project, service, {})["SD"] == "second"


def test_default_dotenv_file_and_single_file(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            environment: {dotenv: {}}
          b:
            runner: {type: script, script: {run: b}}
            environment: {dotenv: {file: config/b.env}}
        """
    )
    services = project.config.services
    assert services["a"].environment.dotenv_files() == [str(project.root / ".env")]
    assert services["b"].environment.dotenv_files() == [str(project.root / "config" / "b.env")]


def test_runtime_rendering_of_environment(tmp_path: Path) -> None:
    service = parse_service_entry(
        "a",
        {
            "runner": {"type": "script", "script": {"run": "a"}},
            "rollout": {"type": "recreate", "recreate": {"ports": {"http": 8080}}},
            "environment": {"static": {"URL": "http://localhost:{{runtime.port.http}}"}},
        },
        root=tmp_path,
        source_name="api",
    )
    base = {"RAW": "{{runtime.port.http}}"}
    global_env = EnvironmentSpec(static={"DB": "{{uses.db.port.pg}}"})
    env = build_environment(
        global_env, service, base, ports=service.ports(), uses={"db": {"pg": 5432}}
    )
    assert env == {"RAW": "{{runtime.port.http}}", "URL": "http://localhost:8080", "DB": "5432"}
    with pytest.raises(RuntimeTemplateError, match="Unknown uses alias: db"):
        build_environment(global_env, service, base, ports=service.ports())
    # Without ports nothing is rendered.
    assert build_environment(None, service, {})["URL"] == "http://localhost:{{runtime.port.http}}"
