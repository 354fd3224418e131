"""Property: no input makes the config layer raise anything but ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive.config import ConfigError, load_project, parse_service_entry

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    "version", "services", "runner", "type", "script", "run", "working_dir", "docker", "image",
    "rollout", "recreate", "blue-green", "ports", "http", "blue", "green", "healthcheck", "tcp",
    "cmd", "port", "command", "proxy", "path", "host", "depends_on", "environment", "static",
    "dotenv", "files", "restart", "policy", "delay", "hooks", "pre-up", "parallel", "on_failure",
    "expose", "name", "vars", "uses", "as", "build", "defaults", "hive.runner.script", "shell",
    "stop_signal", "stop_grace", "interval", "a", "b", "",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["1", "script", "/api", "8080", "10s", "x{{runtime.port.http}}", "{{runtime.port.http}}",
         "${env.X}", "${env.X:-d}", "$${", "{{{", "${service.name}", "http://h", "always", "-1"]
    ),
    st.text(max_size=12),
)  # fmt: skip
DATA = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    ),
    max_leaves=40,
)
VALID_SERVICE: dict[str, Any] = {
    "runner": {"type": "script", "script": {"run": "serve {{runtime.port.http}}"}},
    "rollout": {"type": "blue-green", "blue-green": {"ports": {"http": {"blue": 1, "green": 2}}}},
    "healthcheck": [{"type": "http", "http": {"port": "{{runtime.port.http}}"}}],
    "proxy": [{"path": "/", "host": "h"}],
    "depends_on": [],
    "environment": {"static": {"A": "b"}, "dotenv": {"files": [".env"]}},
    "restart": {"policy": "always", "delay": "1s"},
    "hooks": {"pre-up": [{"run": "x"}, {"parallel": [{"run": "y"}]}]},
    "expose": {"name": "e", "vars": {"P": "{{runtime.port.http}}"}},
    "uses": [{"name": "u", "as": "u"}],
    "build": {"command": "make"},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


ALL_PATHS = _paths(VALID_SERVICE)[1:]


def _problems_of(error: ConfigError) -> list[str]:
    # Whatever failed, it failed with issues that print.
    return [str(issue) for issue in error.issues]


def _load(directory: Path, text: str) -> None:
    (directory / "hive.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_project(directory, environ={"X": "1"})
    except ConfigError as error:
        problems = _problems_of(error)
        assert problems


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from(list("ab:-[]{}#&*!|>'\"\n $.0123456789_")), max_size=200)
)
def test_yaml_ish_text_only_raises_config_error(fuzz_dir: Path, text: str) -> None:
    _load(fuzz_dir, text)


@SETTINGS
@given(data=DATA, version=st.sampled_from(["1", 1, None]))
def test_random_documents_only_raise_config_error(fuzz_dir: Path, data: Any, version: Any) -> None:
    document = {"version": version, "services": data} if version is not None else data
    _load(fuzz_dir, yaml.safe_dump(document, allow_unicode=True))


@SETTINGS
@given(replacements=st.lists(st.tuples(st.sampled_from(ALL_PATHS), DATA), min_size=1, max_size=3))
def test_mutated_services_only_raise_config_error(
    fuzz_dir: Path, replacements: list[tuple[tuple[Any, ...], Any]]
) -> None:
    entry = copy.deepcopy(VALID_SERVICE)
    for path, value in replacements:
        target: Any = entry
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    try:
        parse_service_entry("svc", entry, root=fuzz_dir, source_name="fuzz")
    except ConfigError as error:
        problems = _problems_of(error)
        assert problems
    _load(fuzz_dir, yaml.safe_dump({"version": "1", "services": {"svc": entry}}))


def test_the_unmutated_service_is_valid(fuzz_dir: Path) -> None:
    parse_service_entry("svc", VALID_SERVICE, root=fuzz_dir, source_name="fuzz")
