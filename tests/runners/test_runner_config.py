"""The runner side of a block: decoded once into the runner's Config, typed reads, errors
that quote msgspec's ``$.path``. No engine is needed: a wrong block is refused before one
is called, and the create request is built from the typed block alone."""

from __future__ import annotations

from typing import Any

import pytest

from runners._container import create_body
from runners.base import RunnerError, RunSpec
from runners.compose import ComposeRunner
from runners.docker import DockerRunner
from runners.podman import PodmanRunner

pytestmark = pytest.mark.anyio


def block_spec(**config: Any) -> RunSpec:
    return RunSpec(fqn="proj:db", config=config)


@pytest.mark.parametrize(("config", "message"), [
    ({"image": "x", "deny_pull": "yes"}, "invalid podman block: Expected `bool`, got `str` - at `$.deny_pull`"),
    ({"image": "x", "security": {"read_only": "no"}},
     "invalid podman block: Expected `bool`, got `str` - at `$.security.read_only`"),
    ({"image": "x", "ports": "8080:80"}, "invalid podman block: Expected `array`, got `str` - at `$.ports`"),
    ({"image": "  "}, "invalid podman block: image is required (the image to run, e.g. nginx:1.27) - at `$.image`"),
])
async def test_a_wrong_block_is_refused_before_the_engine_is_called(config: dict[str, Any], message: str) -> None:
    # binary: a program that does not exist, so reaching the engine would say so instead.
    runner = PodmanRunner(binary="podman-not-called")
    with pytest.raises(RunnerError) as caught:
        await runner.start(block_spec(**config))
    assert str(caught.value) == message


async def test_compose_quotes_the_path_too() -> None:
    with pytest.raises(RunnerError) as caught:
        await ComposeRunner().start(block_spec(file="compose.yaml", service="db", command="./seed.sh"))
    assert str(caught.value) == "invalid compose block: Expected `array`, got `str` - at `$.command`"


@pytest.mark.parametrize("runner_class", [DockerRunner, PodmanRunner])
def test_the_create_request_honours_every_typed_key(runner_class: type[DockerRunner | PodmanRunner]) -> None:
    runner = runner_class()
    spec = block_spec(
        image="postgres:16", deny_pull=True, bind_ip="0.0.0.0", ports=["5432:5432", "80"],
        network_mode="host", command=["postgres", "-c", "fsync=off"], entrypoint=["tini", "--"],
        security={"cap_drop_all": False, "cap_add": ["NET_ADMIN"], "no_new_privileges": False,
                  "read_only": True, "user": "1000:1000", "security_opt": ["label=disable"]},
    )
    body = create_body(spec, runner.config_of(spec), {}, "0" * 16)
    host = body["HostConfig"]
    assert host["PortBindings"] == {"5432/tcp": [{"HostIp": "0.0.0.0", "HostPort": "5432"}]}
    assert body["ExposedPorts"] == {"5432/tcp": {}}  # "80" has no ':': ignored
    assert host["NetworkMode"] == "host"
    assert (body["Image"], body["Entrypoint"], body["Cmd"]) == (
        "postgres:16", ["tini", "--"], ["postgres", "-c", "fsync=off"])
    assert (host["CapDrop"], host["CapAdd"]) == ([], ["NET_ADMIN"])
    assert host["SecurityOpt"] == ["label=disable"]
    assert host["ReadonlyRootfs"] is True and body["User"] == "1000:1000"


def test_the_secure_defaults_hold_without_a_security_block() -> None:
    runner = DockerRunner()
    spec = block_spec(image="redis:7")
    body = create_body(spec, runner.config_of(spec), {}, "0" * 16)
    host = body["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is False and "User" not in body and host["PortBindings"] == {}
