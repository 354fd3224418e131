"""A hook step in a container (``run_once``), through the engine's API: its lines are
the step's output, the engine's failures are the step's error and never output lines,
and its environment is on no command line."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import anyio
import pytest

from runners._container_runner import ContainerRunner
from runners.base import RunnerError, RunSpec
from runners.docker import DockerRunner
from runners.podman import PodmanRunner
from tests.engines import IMAGE, require_engine
from tests.runners.conftest import SpecFactory

pytestmark = pytest.mark.anyio

RUNNERS: dict[str, type[ContainerRunner]] = {"docker": DockerRunner, "podman": PodmanRunner}


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    require_engine(name)
    yield name
    listed = subprocess.run([name, "ps", "-aq", "--filter", "label=hive.hook-of"],
                            capture_output=True, text=True, check=False)
    assert listed.stdout.split() == []  # every step's container removed


def step(spec: SpecFactory, **config: object) -> RunSpec:
    config.setdefault("image", IMAGE)
    config.setdefault("network_mode", "none")
    return spec("", fqn=f"t{uuid.uuid4().hex[:8]}:svc", config=config, env={"TOKEN": "s3cret-hook"},
                own_env=frozenset({"TOKEN"}))


async def test_a_step_gives_its_lines_and_exit_code(engine: str, spec: SpecFactory) -> None:
    lines: list[tuple[str, str]] = []
    made = step(spec, command=["sh", "-c", "echo out $TOKEN; echo err >&2; printf last; exit 3"])
    with anyio.fail_after(60):
        code = await RUNNERS[engine]().run_once(made, lambda stream, line: lines.append((stream, line)))
    assert code == 3
    assert sorted(lines) == [("stderr", "err"), ("stdout", "last"), ("stdout", "out s3cret-hook")]


async def test_an_engine_failure_is_the_steps_error_not_its_output(engine: str, spec: SpecFactory) -> None:
    lines: list[tuple[str, str]] = []
    missing = "localhost/hive-test-missing:nope"
    made = step(spec, image=missing, deny_pull=True, command=["true"])
    with anyio.fail_after(60), pytest.raises(RunnerError) as caught:
        await RUNNERS[engine]().run_once(made, lambda stream, line: lines.append((stream, line)))
    assert str(caught.value) == f"image {missing} is not present and deny_pull is set"
    assert lines == []
