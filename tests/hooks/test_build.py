"""build_needed and run_build (hive.yaml §9)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from hive.daemon.build import TAIL_LINES, BuildResult, build_needed, run_build
from tests.hooks.helpers import Sink, all_gone, base_env, build_spec, pid_written, read_pid
from tests.support import wait_until

pytestmark = pytest.mark.anyio

FQN = "p:svc"


@pytest.mark.parametrize(
    ("when", "with_output", "output_exists", "force", "expected"),
    [
        ("missing", True, False, False, True),
        ("missing", True, True, False, False),
        ("missing", True, True, True, True),
        ("missing", False, False, False, True),  # without output, missing always builds
        ("always", True, True, False, True),
        ("always", False, False, False, True),
        ("never", True, False, False, False),
        ("never", False, False, False, False),
        ("never", True, False, True, True),
    ],
)
def test_build_needed(
    tmp_path: Path, when: str, with_output: bool, output_exists: bool, force: bool, expected: bool
) -> None:
    fields = {"command": "true", "when": when}
    if with_output:
        fields["output"] = "app.bin"
    if output_exists:
        (tmp_path / "app.bin").touch()
    assert build_needed(build_spec(tmp_path, **fields), force=force) is expected


def test_the_default_is_missing(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, command="true", output="out")
    assert spec.when == "missing"
    assert build_needed(spec)
    (tmp_path / "out").touch()
    assert not build_needed(spec)


async def _start(spec_root: Path, spec_fields: dict[str, str], *, force: bool = False,
                 sink: Sink | None = None) -> BuildResult | None:
    """What a start does: build if needed. None when the build was skipped."""
    spec = build_spec(spec_root, **spec_fields)
    if not build_needed(spec, force=force):
        return None
    return await run_build(spec, fqn=FQN, env=base_env(), output=sink or Sink())


async def test_missing_with_output_builds_once(tmp_path: Path) -> None:
    fields = {"command": "echo built >> builds.log; mkdir -p dist; touch dist/app",
              "output": "dist/app"}
    assert build_spec(tmp_path, **fields).output == str(tmp_path / "dist" / "app")
    sink = Sink()
    first = await _start(tmp_path, fields, sink=sink)
    assert first is not None
    assert first.ok, first.message
    assert first.exit_code == 0
    assert first.message == f"Build succeeded for service {FQN}"
    assert sink.hive()[0] == (
        f"build: running `echo built >> builds.log; mkdir -p dist; touch dist/app` in {tmp_path}"
    )
    assert await _start(tmp_path, fields) is None  # the output exists: skipped
    assert (tmp_path / "builds.log").read_text() == "built\n"
    (tmp_path / "dist" / "app").unlink()
    rebuilt = await _start(tmp_path, fields)
    assert rebuilt is not None
    assert rebuilt.ok
    assert (tmp_path / "builds.log").read_text() == "built\nbuilt\n"


async def test_missing_without_output_always_builds(tmp_path: Path) -> None:
    fields = {"command": "echo built >> builds.log"}
    for _ in range(2):
        result = await _start(tmp_path, fields)
        assert result is not None
        assert result.ok
    assert (tmp_path / "builds.log").read_text() == "built\nbuilt\n"


async def test_always_builds_even_when_the_output_exists(tmp_path: Path) -> None:
    (tmp_path / "app").touch()
    fields = {"command": "echo built >> builds.log", "when": "always", "output": "app"}
    for _ in range(2):
        assert await _start(tmp_path, fields) is not None
    assert (tmp_path / "builds.log").read_text() == "built\nbuilt\n"


async def test_never_builds_unless_forced(tmp_path: Path) -> None:
    fields = {"command": "echo built >> builds.log", "when": "never"}
    assert await _start(tmp_path, fields) is None
    assert not (tmp_path / "builds.log").exists()
    forced = await _start(tmp_path, fields, force=True)
    assert forced is not None
    assert forced.ok
    assert (tmp_path / "builds.log").read_text() == "built\n"


async def test_a_build_that_leaves_no_output_says_so(tmp_path: Path) -> None:
    sink = Sink()
    result = await _start(tmp_path, {"command": "true", "output": "never-made"}, sink=sink)
    assert result is not None
    assert result.ok
    assert any("did not create" in line for line in sink.hive())


async def test_failing_build_message_has_the_last_output_lines(tmp_path: Path) -> None:
    sink = Sink()
    result = await _start(
        tmp_path, {"command": "for i in $(seq 1 30); do echo line$i; done; exit 2"}, sink=sink
    )
    assert result is not None
    assert not result.ok
    assert result.exit_code == 2
    assert result.message == (
        f"Build failed for service {FQN}: exit code 2: line26 | line27 | line28 | line29 | line30"
    )
    assert result.tail == [f"line{i}" for i in range(31 - TAIL_LINES, 31)]
    assert sink.stream("stdout") == [f"line{i}" for i in range(1, 31)]
    assert sink.hive()[-1] == result.message


async def test_failing_build_includes_stderr(tmp_path: Path) -> None:
    result = await _start(tmp_path, {"command": "echo 'cc: error: missing.h' >&2; exit 1"})
    assert result is not None
    assert result.message == f"Build failed for service {FQN}: exit code 1: cc: error: missing.h"


async def test_build_env_and_working_dir(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    spec = build_spec(tmp_path, command='pwd; echo "token=$TOKEN"', working_dir="web")
    sink = Sink()
    result = await run_build(spec, fqn=FQN, env=base_env(TOKEN="abc"), output=sink)
    assert result.ok
    assert sink.stream("stdout") == [str(tmp_path / "web"), "token=abc"]


async def test_build_timeout_kills_the_build(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, command="echo $$ > build.pid; sleep 300 & echo $! > child.pid; wait")
    result = await run_build(spec, fqn=FQN, env=base_env(), output=Sink(), timeout=0.3)
    assert not result.ok
    assert result.exit_code is None
    assert result.message == f"Build failed for service {FQN}: timed out after 300ms"
    pids = [read_pid(tmp_path / "build.pid"), read_pid(tmp_path / "child.pid")]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the build's processes to exit")


async def test_build_missing_working_dir_or_shell(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, command="true", working_dir="nope")
    result = await run_build(spec, fqn=FQN, env=base_env(), output=Sink())
    assert (result.ok, result.exit_code) == (False, None)
    assert result.message == (
        f"Build failed for service {FQN}: working directory {tmp_path / 'nope'} does not exist"
    )
    spec = build_spec(tmp_path, command="true")
    result = await run_build(spec, fqn=FQN, env=base_env(), output=Sink(), shell="/no/such/sh")
    assert result.message == f"Build failed for service {FQN}: shell /no/such/sh not found"


async def test_cancelling_a_build_kills_it(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, command="echo $$ > build.pid; sleep 300 & echo $! > child.pid; wait")
    results: list[BuildResult] = []

    async def build() -> None:
        results.append(await run_build(spec, fqn=FQN, env=base_env(), output=Sink()))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(build)
            await wait_until(lambda: pid_written(tmp_path / "child.pid"), what="the build to start")
            tg.cancel_scope.cancel()
    assert results == []
    pids = [read_pid(tmp_path / "build.pid"), read_pid(tmp_path / "child.pid")]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the build's processes to exit")
