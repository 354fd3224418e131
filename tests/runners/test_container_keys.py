"""The docker/podman block's common keys (env_file, labels, working_dir, hostname,
extra_hosts, mem_limit, cpus, init, user, pull) take effect in a real engine: the
container is inspected, and what runs inside says so."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runners._container_runner import ContainerRunner
from runners.base import ExitStatus, RunnerError, RunSpec
from runners.docker import DockerRunner
from runners.podman import PodmanRunner
from tests.engines import IMAGE, require_engine
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import output_contains, read

pytestmark = pytest.mark.anyio

RUNNERS: dict[str, type[ContainerRunner]] = {"docker": DockerRunner, "podman": PodmanRunner}
REPORT = ("echo \"env=$FROM_FILE,$OVERRIDDEN,$BARE\"; echo \"pwd=$(pwd)\"; echo \"host=$(hostname)\"; "
          "echo \"hosts=$(grep db.internal /etc/hosts | tr -s ' \\t' ' ')\"; echo \"uid=$(id -u)\"; "
          "echo \"pid1=$(cat /proc/1/comm)\"; echo done; trap 'exit 0' TERM; sleep 1000 & wait")


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    require_engine(name)
    source = f"t{uuid.uuid4().hex[:10]}"
    request.node.hive_source = source
    yield name
    listed = subprocess.run([name, "ps", "-aq", "--filter", f"label=hive.source={source}"],
                            capture_output=True, text=True, check=False)
    if listed.stdout.split():
        subprocess.run([name, "rm", "-f", "-v", *listed.stdout.split()], capture_output=True, check=False)


def container_spec(request: pytest.FixtureRequest, spec: SpecFactory, **config: Any) -> RunSpec:
    config.setdefault("image", IMAGE)
    return spec("", fqn=f"{request.node.hive_source}:svc", config=config, env={"BARE": "from-service"},
                own_env=frozenset({"BARE"}))


def inspect(engine: str, container_id: str) -> dict[str, Any]:
    result = subprocess.run([engine, "inspect", "--type", "container", container_id],
                            capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(result.stdout)[0]
    return found


async def test_each_common_key_takes_effect(engine: str, request: pytest.FixtureRequest, spec: SpecFactory,
                                           home: Path) -> None:
    (home / "work").mkdir(exist_ok=True)
    (home / "work" / "app.env").write_text("# the app's\nFROM_FILE=yes it is\n\nOVERRIDDEN=by the file\nBARE\n")
    made = container_spec(
        request, spec, command=["sh", "-c", REPORT], network_mode="none",
        env_file="./app.env", environment={"OVERRIDDEN": "by the block"},
        labels={"team": "core"}, working_dir="/tmp", hostname="keys-host",
        extra_hosts=["db.internal:10.1.2.3"], mem_limit="64m", cpus=0.5, init=True,
        user="65534:65534", pull="never",
    )
    handle = await RUNNERS[engine]().start(made)
    await output_contains(made.stdout_path, "done\n", timeout=30)
    lines = dict(line.split("=", 1) for line in read(made.stdout_path).splitlines() if "=" in line)
    assert lines["env"] == "yes it is,by the block,from-service"
    assert lines["pwd"] == "/tmp"
    assert lines["host"] == "keys-host"
    assert lines["hosts"] == "10.1.2.3 db.internal"
    assert lines["uid"] == "65534"
    assert lines["pid1"] in ("docker-init", "podman-init", "tini", "catatonit")  # not sh: an init runs it
    info = inspect(engine, handle.container_id)
    assert info["Config"]["Labels"]["team"] == "core"
    assert info["Config"]["WorkingDir"] == "/tmp"
    assert info["Config"]["Hostname"] == "keys-host"
    assert info["Config"]["User"] == "65534:65534"
    assert "db.internal:10.1.2.3" in info["HostConfig"]["ExtraHosts"]
    assert info["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert info["HostConfig"]["Init"] is True
    with anyio.fail_after(30):
        assert await handle.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)


async def test_pull_always_pulls_an_image_that_is_present(
    engine: str, request: pytest.FixtureRequest, spec: SpecFactory
) -> None:
    # The test image is local only (localhost/…): a pull reaches no registry and fails,
    # which shows it was tried although the image is there.
    made = container_spec(request, spec, command=["true"], network_mode="none", pull="always")
    with anyio.fail_after(60), pytest.raises(RunnerError) as caught:
        await RUNNERS[engine]().start(made)
    assert str(caught.value).startswith(f"cannot pull image {IMAGE}: ")


async def test_pull_never_refuses_a_missing_image(
    engine: str, request: pytest.FixtureRequest, spec: SpecFactory
) -> None:
    missing = "localhost/hive-test-missing:nope"
    made = container_spec(request, spec, image=missing, network_mode="none", pull="never")
    with anyio.fail_after(60), pytest.raises(RunnerError) as caught:
        await RUNNERS[engine]().start(made)
    assert str(caught.value) == f"image {missing} is not present and pull is never"


async def test_a_missing_env_file_is_named(engine: str, request: pytest.FixtureRequest, spec: SpecFactory,
                                           home: Path) -> None:
    made = container_spec(request, spec, command=["true"], network_mode="none", env_file=["./nope.env"])
    with pytest.raises(RunnerError) as caught:
        await RUNNERS[engine]().start(made)
    assert str(caught.value) == f"env_file ./nope.env: no such file ({home / 'work' / 'nope.env'})"
