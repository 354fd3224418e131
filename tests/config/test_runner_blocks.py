"""A runner's block in hive.yaml is checked against the runner's own ``Config``.

The keys a runner honours and the keys ``hive config validate`` knows are one definition
(the runner's), found through the ``hive.runners`` entry points: these tests hold the two
sides together, and keep the config layer from growing a second copy again.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

import hive.config
from hive.config import ConfigIssue, HiveConfig, LoadedProject, RunnerSpec, load_project
from hive.entry_points import entry_points
from runners.base import RunSpec
from runners.docker import DockerRunner
from runners.podman import PodmanRunner
from runners.script import ScriptRunner
from tests.support import run_cli

from .conftest import ErrorsOf, LoadText, WriteProject

BUILT_IN = ("script", "docker", "podman", "compose")

# Keys the podman runner honoured while `hive config validate` called them unknown.
PODMAN_DRIFT = {
    "deny_pull": "true",
    "bind_ip": "0.0.0.0",
    "security": "{read_only: true, user: 1000, cap_add: [NET_BIND_SERVICE]}",
    "container_name": "pg",
}


def podman_project(key: str, value: str) -> str:
    return f"""
        version: "1"
        services:
          db:
            runner:
              type: podman
              podman:
                image: postgres:16
                {key}: {value}
        """


@pytest.mark.parametrize("key", sorted(PODMAN_DRIFT))
def test_a_podman_key_the_runner_honours_does_not_warn(load_text: LoadText, key: str) -> None:
    project = load_text(podman_project(key, PODMAN_DRIFT[key]))
    assert [str(warning) for warning in project.warnings] == []
    assert key in project.config.services["db"].runner.config


def test_hive_config_validate_takes_the_podman_keys(write_project: WriteProject) -> None:
    root = write_project("""
        version: "1"
        services:
          db:
            runner:
              type: podman
              podman:
                image: postgres:16
                deny_pull: true
                bind_ip: 0.0.0.0
                container_name: pg
                security: {read_only: true}
        """)
    result = run_cli("config", "validate", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"valid: {root / 'hive.yaml'} (1 service)"]


def test_an_unknown_runner_key_still_warns_with_a_suggestion(load_text: LoadText) -> None:
    project = load_text(podman_project("security", "{read_ony: true}"))
    assert [str(warning) for warning in project.warnings] == [
        "hive.yaml:8: warning: services.db.runner.podman.security.read_ony: unknown key "
        "'read_ony' (did you mean 'read_only'?)"
    ]


def test_a_wrongly_typed_runner_key_is_an_error_with_its_line(errors_of: ErrorsOf) -> None:
    assert errors_of(podman_project("deny_pull", '"yes"')) == [
        "hive.yaml:8: services.db.runner.podman.deny_pull: expected a boolean (true/false), "
        "got a string ('yes')"
    ]
    assert errors_of(podman_project("security", '{read_only: "no"}')) == [
        "hive.yaml:8: services.db.runner.podman.security.read_only: expected a boolean "
        "(true/false), got a string ('no')"
    ]


def compose_project(block: str) -> str:
    return f"""
        version: "1"
        services:
          db:
            runner:
              type: compose
              compose: {block}
        """


def test_compose_file_is_required_as_the_runner_requires_it(errors_of: ErrorsOf) -> None:
    assert errors_of(compose_project("{service: postgres}")) == [
        "hive.yaml:6: services.db.runner.compose.file: 'file' is required"
    ]


def test_compose_command_is_a_list_as_the_runner_takes_it(errors_of: ErrorsOf) -> None:
    assert errors_of(compose_project("{file: compose.yaml, service: tools, command: ./seed.sh}")) == [
        "hive.yaml:6: services.db.runner.compose.command: expected a list, got a string ('./seed.sh')"
    ]


def test_what_validate_accepts_the_runner_decodes(load_text: LoadText) -> None:
    """The block handed on is the one checked: `V: 1.10` stays the text it was written as."""
    project = load_text(podman_project("environment", "{V: 1.10, PORT: 8080, DEBUG: true}"))
    block = project.config.services["db"].runner.config
    config = PodmanRunner().config_of(RunSpec(fqn="p:db", config=block))
    assert config.environment == {"V": "1.10", "PORT": "8080", "DEBUG": "true"}


def test_every_built_in_runner_has_a_config_found_through_its_entry_point() -> None:
    from hive.config._runners import runner_schema
    from runners.base import RunnerConfig

    registered = {point.name: point for point in entry_points("hive.runners")}
    for name in BUILT_IN:
        runner = registered[name].load()
        assert isinstance(runner.Config, type) and issubclass(runner.Config, RunnerConfig), name
        assert runner_schema(name) is runner.Config
    assert hive.config.ScriptRunnerConfig is ScriptRunner.Config


def _fields(struct: type[msgspec.Struct], into: set[str], *, skip: tuple[type, ...] = ()) -> set[str]:
    """The keys of ``struct`` and of every Struct it holds (not descending into ``skip``)."""

    def visit(info: mi.Type) -> None:
        if isinstance(info, mi.StructType):
            if info.cls in seen or issubclass(info.cls, skip):
                return
            seen.add(info.cls)
            for field in info.fields:
                into.add(field.encode_name)
                visit(field.type)
        for attribute in ("type", "item_type", "value_type"):
            inner = getattr(info, attribute, None)
            if isinstance(inner, mi.Type):
                visit(inner)
        for member in getattr(info, "types", ()):
            visit(member)

    seen: set[type] = set()
    visit(mi.type_info(struct))
    return into


def test_the_config_layer_keeps_no_second_copy_of_runner_keys() -> None:
    import hive.config._build
    import hive.config._decode
    import hive.config._loader
    import hive.config._model
    import hive.config._validate

    configs = [point.load().Config for point in entry_points("hive.runners") if point.name in BUILT_IN]
    runner_keys: set[str] = set()
    for config in configs:
        _fields(config, runner_keys)
    # The format's own vocabulary (services, hooks, rollouts…), without the runner blocks.
    vocabulary = _fields(HiveConfig, set(), skip=(RunnerSpec,)) | {"type", "config", "script"}
    runner_only = runner_keys - vocabulary
    # ("service" is also the grpc health check's key, so part of the format's own vocabulary.)
    assert {"image", "deny_pull", "bind_ip", "container_name", "security", "file"} <= runner_only
    results = {ConfigIssue, LoadedProject}  # what a load returns, not shapes of hive.yaml
    copies: dict[str, Any] = {}
    # The builder is a package: its section modules hold its own structs.
    sections = [importlib.import_module(f"hive.config._build.{info.name}")
                for info in pkgutil.iter_modules(hive.config._build.__path__)]
    modules = (hive.config._build, *sections, hive.config._decode, hive.config._loader,
               hive.config._model, hive.config._validate)
    for module in modules:
        for name, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, msgspec.Struct)
                    and value.__module__.startswith("hive.config")
                    and value not in configs and value not in results):
                shared = set(value.__struct_encode_fields__) & runner_only
                if shared:
                    copies[f"{module.__name__}.{name}"] = sorted(shared)
    assert copies == {}


def test_a_runner_without_a_config_gets_its_block_unchecked(write_project: WriteProject) -> None:
    """A third-party runner need not declare a Config (tests/third_party_runner has none)."""
    from hive.config._runners import runner_schema
    from tests.support import install_package

    install_package(Path(__file__).parent.parent / "third_party_runner", "hive_echo_runner")
    from hive_echo_runner import EchoRunner

    assert EchoRunner.Config is None and runner_schema("echo") is None
    root = write_project("""
        version: "1"
        services:
          greeter:
            runner: {type: echo, echo: {message: hi, anything: [1]}}
        """)
    project = load_project(root, environ={})
    assert project.warnings == []
    assert project.config.services["greeter"].runner.config == {"message": "hi", "anything": [1]}


def test_docker_takes_the_same_keys_as_podman() -> None:
    assert DockerRunner.Config is PodmanRunner.Config


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_keys_that_cannot_apply_warn_with_their_line(load_text: LoadText, engine: str) -> None:
    """`restart:` in a block and `ports:` with host networking were accepted and silently
    ignored: the file says something Hive does not do."""
    project = load_text(f"""
        version: "1"
        services:
          web:
            runner:
              type: {engine}
              {engine}:
                image: nginx:1.27
                restart: always
                network_mode: host
                ports: ["8080:80"]
        """)
    assert [str(warning) for warning in project.warnings] == [
        f"hive.yaml:8: warning: services.web.runner.{engine}.restart: ignored: Hive restarts the "
        "service by its own restart policy; set the service's restart (beside runner: "
        "restart: {policy: always}) instead",
        f"hive.yaml:10: warning: services.web.runner.{engine}.ports: ignored with network_mode: host "
        "(the container uses the host's ports directly): remove ports, or use another network_mode",
    ]


def test_hive_config_validate_shows_keys_that_cannot_apply(write_project: WriteProject) -> None:
    root = write_project("""
        version: "1"
        services:
          web:
            runner:
              type: docker
              docker: {image: nginx:1.27, network_mode: host, ports: ["8080:80"], restart: unless-stopped}
        """)
    result = run_cli("config", "validate", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "hive.yaml:6: warning: services.web.runner.docker.restart: ignored" in output
    assert "hive.yaml:6: warning: services.web.runner.docker.ports: ignored with network_mode: host" in output
