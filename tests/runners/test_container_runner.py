"""The docker and podman runners drive real engines: output, exit codes, stop, adoption,
names, and the errors a user can act on.

Every test runs against both engines. An engine that is not usable here (not installed,
daemon down, the test image missing) skips its tests, unless CI=true: then they fail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from runners._container import container_name, parse_port
from runners._container_handle import ContainerHandle
from runners._container_runner import ContainerRunner
from runners.base import ExitStatus, RunnerError, RunSpec
from runners.docker import DockerRunner
from runners.podman import PodmanRunner
from tests.engines import IMAGE, require_engine
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import engines_own, is_podman_service, output_contains, read, until

pytestmark = pytest.mark.anyio

MISSING_IMAGE = "localhost/hive-test-missing:nope"
ENGINES = ["docker", "podman"]
RUNNERS: dict[str, type[ContainerRunner]] = {"docker": DockerRunner, "podman": PodmanRunner}
# The shell as PID 1 ignores SIGTERM unless it traps it; this one exits 0 on it.
TRAPPING = "trap 'exit 0' TERM; sleep 1000 & wait"

ContainerSpec = Callable[..., RunSpec]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
def runner(engine: str) -> ContainerRunner:
    return RUNNERS[engine]()


@pytest.fixture
def source() -> str:
    """A source name of this test alone: its containers are labelled with it."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cspec(engine: str, spec: SpecFactory, source: str) -> Iterator[ContainerSpec]:
    """``cspec(shell_command, service="svc", **config)``: a RunSpec for a busybox container
    on the host network; every container of the test is removed at its end."""

    def factory(command: str | None, *, service: str = "svc", spec_fields: dict[str, Any] | None = None,
                **config: Any) -> RunSpec:
        config.setdefault("image", IMAGE)
        config.setdefault("network_mode", "host")
        if command is not None:
            config.setdefault("command", ["sh", "-c", command])
        return spec("", fqn=f"{source}:{service}", config=config, **(spec_fields or {}))

    yield factory
    listed = subprocess.run(
        [engine, "ps", "-aq", "--filter", f"label=hive.source={source}"],
        capture_output=True, text=True, check=False,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run([engine, "rm", "-f", "-v", *ids], capture_output=True, check=False)


def listed(engine: str, container_id: str) -> bool:
    """Whether ``<engine> ps -a`` still lists the container."""
    result = subprocess.run(
        [engine, "ps", "-a", "--no-trunc", "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True,
    )
    return any(container_id.startswith(line) or line.startswith(container_id)
               for line in result.stdout.split())


# --- running ---------------------------------------------------------------------------------


async def test_output_reaches_the_capture_files(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("echo hello; echo oops >&2; sleep 1000")
    handle = await runner.start(spec)
    assert isinstance(handle, ContainerHandle)
    assert handle.container_id
    await output_contains(spec.stdout_path, "hello\n", timeout=20)
    await output_contains(spec.stderr_path, "oops\n", timeout=20)
    assert "oops" not in read(spec.stdout_path)
    assert "hello" not in read(spec.stderr_path)
    with anyio.fail_after(30):
        await handle.stop(signal.SIGKILL, 0)


async def test_wait_returns_the_exit_code(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("echo last words; exit 3")
    handle = await runner.start(spec)
    with anyio.fail_after(30):
        status = await handle.wait()
    assert status == ExitStatus(exit_code=3)
    # The output is complete when wait() returns.
    assert read(spec.stdout_path) == "last words\n"
    # Several waiters get the same answer.
    with anyio.fail_after(5):
        assert await handle.wait() == status


async def test_only_the_services_own_environment_is_passed(
    runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    spec = cspec('echo "foo=$FOO bar=$BAR path=$PATH home=$HOME"',
                 environment={"BAR": "from block", "FOO": "overridden"})
    spec.env["FOO"] = "from service"
    spec.env["BAR"] = "from service"
    handle = await runner.start(spec)
    with anyio.fail_after(30):
        assert await handle.wait() == ExitStatus(exit_code=0)
    line = read(spec.stdout_path)
    assert "foo=overridden bar=from block" in line
    assert os.environ["PATH"] not in line  # the daemon's PATH stays out


async def test_a_variable_the_service_sets_to_the_daemons_value_is_passed(
    runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    spec = cspec('echo "lang=${HIVE_TEST_LANG:-unset} host=${HIVE_TEST_HOST:-unset}"')
    os.environ["HIVE_TEST_LANG"] = os.environ["HIVE_TEST_HOST"] = "C.UTF-8"
    try:
        spec.env["HIVE_TEST_LANG"] = spec.env["HIVE_TEST_HOST"] = "C.UTF-8"
        spec.own_env = frozenset({"HIVE_TEST_LANG"})  # hive.yaml sets it; HOST is the daemon's
        handle = await runner.start(spec)
        with anyio.fail_after(30):
            assert await handle.wait() == ExitStatus(exit_code=0)
    finally:
        del os.environ["HIVE_TEST_LANG"], os.environ["HIVE_TEST_HOST"]
    assert "lang=C.UTF-8 host=unset" in read(spec.stdout_path)


async def test_no_value_on_any_command_line(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    """A variable the daemon's environment also has (``HOME`` here, an ``API_TOKEN`` for a
    user) reaches the container, and its value shows in no process's command line while
    the container is started (every ``/proc/*/cmdline`` read over and over meanwhile)."""
    secret = f"secret-{uuid.uuid4().hex}"
    spec = cspec('echo "home=$HOME"')
    spec.env["HOME"] = secret
    seen: list[str] = []
    starting = threading.Event()

    def scan() -> None:
        while starting.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    if secret.encode() in cmdline.read_bytes():
                        seen.append(str(cmdline))

    starting.set()
    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        handle = await runner.start(spec)
    finally:
        starting.clear()
        scanner.join()
    with anyio.fail_after(30):
        assert await handle.wait() == ExitStatus(exit_code=0)
    assert f"home={secret}" in read(spec.stdout_path)
    assert seen == []
    assert not list(Path(tempfile.gettempdir()).glob("hive-env-*"))  # nor in an env file


async def test_exec_check_runs_a_command_inside(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    handle = await runner.start(cspec(TRAPPING))
    assert isinstance(handle, ContainerHandle)
    with anyio.fail_after(30):
        run = await handle.exec_check("echo $((6 * 7)); exit 4", 10)
        assert (run.exit_code, run.output) == (4, "42")
        run = await handle.exec_check("echo oops >&2", 10)
        assert (run.exit_code, run.output) == (0, "oops")
        await handle.stop(signal.SIGTERM, 10)


async def test_no_helper_process_per_container(engine: str, runner: ContainerRunner, cspec: ContainerSpec) -> None:
    """On the engine's API, supervising containers (their output and their exits) costs no
    process: the test's process has no child while three run and print, but podman's API
    service (the engine, started if it did not run: one, whatever the count)."""
    before = set(psutil.Process().children(recursive=True))  # what earlier tests left is theirs
    specs = [cspec(f"echo up {index}; {TRAPPING}", service=f"svc{index}") for index in range(3)]
    handles = [await runner.start(spec) for spec in specs]
    for index, spec in enumerate(specs):
        await output_contains(spec.stdout_path, f"up {index}\n", timeout=20)
    new = set(psutil.Process().children(recursive=True)) - before
    assert {process for process in new if not engines_own(process, before)} == set()
    assert len([process for process in new if is_podman_service(process)]) <= (1 if engine == "podman" else 0)
    with anyio.fail_after(30):
        for handle in handles:
            assert await handle.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)


# --- stop ------------------------------------------------------------------------------------


async def test_stop_ends_and_removes_the_container(
    engine: str, runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    spec = cspec(f"echo up; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=20)
    started = time.monotonic()
    with anyio.fail_after(30):
        status = await handle.stop(signal.SIGTERM, 10)
    assert time.monotonic() - started < 10  # it obeyed the signal: no need for the grace
    assert status == ExitStatus(exit_code=0)
    assert not listed(engine, handle.container_id)
    # A second stop gives the same outcome.
    with anyio.fail_after(10):
        assert await handle.stop(signal.SIGTERM, 10) == status


async def test_stop_kills_after_the_grace(engine: str, runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("echo up; sleep 1000")  # PID 1 without a trap ignores SIGTERM
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=20)
    started = time.monotonic()
    with anyio.fail_after(30):
        status = await handle.stop(signal.SIGTERM, 1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 10
    assert status == ExitStatus(exit_code=128 + signal.SIGKILL)
    assert not listed(engine, handle.container_id)


async def test_stop_with_another_signal(engine: str, runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("trap 'exit 5' INT; echo up; sleep 1000 & wait")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=20)
    with anyio.fail_after(30):
        status = await handle.stop(signal.SIGINT, 10)
    assert status == ExitStatus(exit_code=5)
    assert not listed(engine, handle.container_id)


# --- adopt, discover -------------------------------------------------------------------------


async def test_adopt_a_running_container(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec(f"echo first; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "first", timeout=20)
    record = handle.record()
    assert record["engine"] == runner.name
    assert record["container_id"] == handle.container_id
    assert len(record["config_hash"]) == 16

    adopted = await runner.adopt(spec, record)
    assert isinstance(adopted, ContainerHandle)
    assert adopted.container_id == handle.container_id
    assert adopted.record()["config_hash"] == record["config_hash"]
    # The same running container, as the previous daemon's discover would also find it.
    found = await runner.discover(spec, "unused-marker")
    assert [r["container_id"] for r in found] == [handle.container_id]

    # Another configuration (here: the image's command) is not the same service.
    changed = cspec(f"echo second; {TRAPPING}")
    assert await runner.adopt(changed, record) is None

    with anyio.fail_after(30):
        status = await adopted.stop(signal.SIGTERM, 10)
        assert status == ExitStatus(exit_code=0)
    assert await runner.adopt(spec, record) is None  # gone


async def test_adopt_restarts_a_dead_log_follower(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("echo before; trap 'echo after; exit 0' TERM; sleep 1000 & wait")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "before", timeout=20)
    record = handle.record()
    await handle.close_logs()  # as if the follower had died with the daemon
    adopted = await runner.adopt(spec, record)
    assert adopted is not None
    assert adopted.record()["logs_pid"] is None  # copied by the daemon's engine thread: no process
    with anyio.fail_after(30):
        await adopted.stop(signal.SIGTERM, 10)
    content = read(spec.stdout_path)
    assert content.count("before") == 1  # followed again since the adoption only
    assert "after" in content


async def test_output_printed_while_nothing_followed_is_copied_after_adoption(
    engine: str, runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    # A daemon killed, then started again: what the container printed in between reaches
    # the capture file, none of it lost and none twice: the copy resumes at the position
    # kept on the capture file (the engine's stamp of the last line copied, and how many
    # lines had it), not at the file's mtime (when a line was written: podman's follow
    # lags, and lines printed before that time but not yet copied were lost).
    spec = cspec("i=0; trap 'exit 0' TERM; while :; do i=$((i+1)); echo tick $i; sleep 0.1 & wait $!; done")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "tick 3\n", timeout=20)
    record = handle.record()
    await handle.close_logs()  # the daemon is gone: nothing copies
    copied = read(spec.stdout_path).count("tick")

    def printed() -> int:
        logs = subprocess.run([engine, "logs", handle.container_id], capture_output=True, text=True, check=False)
        return logs.stdout.count("tick")

    await until(lambda: printed() >= copied + 10, timeout=30, what="ten lines printed while nothing copied")
    adopted = await runner.adopt(spec, record)
    assert adopted is not None
    with anyio.fail_after(30):
        await adopted.stop(signal.SIGTERM, 10)
    numbers = [int(line.split()[1]) for line in read(spec.stdout_path).splitlines()]
    once = sorted(set(numbers))
    assert once == list(range(1, len(once) + 1))  # nothing lost
    assert numbers == once  # nothing twice
    assert len(once) >= copied + 10


async def test_an_orphan_is_stopped_and_removed_without_its_configuration(
    runner: ContainerRunner, cspec: ContainerSpec, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its service is gone (removed while no daemon ran): a later daemon has the record only.
    spec = cspec(f"echo up; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=20)
    record = handle.record()
    assert record["socket"] is None  # the engine's default socket

    later = RUNNERS[engine]()
    # A record naming another service's container is not acted on.
    assert await later.stop_orphan("elsewhere:svc", record, 10) is False
    assert (await later.inspect([handle.container_id]))[0]["State"]["Running"]

    with anyio.fail_after(60):
        assert await later.stop_orphan(spec.fqn, record, 10) is True
    assert await later.inspect([handle.container_id]) == []  # stopped and removed
    with anyio.fail_after(30):
        await handle.wait()  # the first daemon's handle sees it end too
    assert await later.stop_orphan(spec.fqn, record, 10) is False  # nothing left to stop
    # A record from before sockets were recorded may name a container on another engine:
    # one not found on the default one is named in the log.
    older = {key: value for key, value in record.items() if key != "socket"}
    with caplog.at_level(logging.WARNING, logger="hive.runners.container"):
        assert await later.stop_orphan(spec.fqn, older, 10) is False
    assert f"container {handle.container_id} not found on the" in caplog.text


async def test_a_late_stop_that_finds_the_engine_away_again_keeps_the_container(
    runner: ContainerRunner, cspec: ContainerSpec, tmp_path: Path
) -> None:
    # A stop asked while the engine was away runs when it is back; if the engine goes
    # away again first, nothing is known to be stopped: None, and the container is kept
    # (supervision waits for the engine again). Here the "engine away" is a dead socket.
    spec = cspec(f"echo up; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=20)
    away = ContainerHandle(
        runner=runner, spec=cspec(None, socket=str(tmp_path / "gone.sock")),
        container_id=handle.container_id, name=handle.name, config_hash=handle.config_hash,
        run_signal=handle.run_signal, socket=str(tmp_path / "gone.sock"),
    )
    assert await away._stop_late(signal.SIGTERM, 5) is None
    assert (await runner.inspect([handle.container_id]))[0]["State"]["Running"]
    with anyio.fail_after(30):
        assert await handle.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)


# --- names -----------------------------------------------------------------------------------


async def test_two_sources_never_share_a_container(
    engine: str, runner: ContainerRunner, spec: SpecFactory
) -> None:
    first, second = f"t{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:10]}"
    config = {"image": IMAGE, "network_mode": "host", "command": ["sh", "-c", TRAPPING]}
    handles = []
    try:
        for source in (first, second):
            made = spec("", fqn=f"{source}:web", config=config)
            handles.append(await runner.start(made))
        names = [h.record()["name"] for h in handles]
        assert names == [f"hive-{first}.web", f"hive-{second}.web"]
        for handle in handles:  # both still run: the second did not replace the first
            assert listed(engine, handle.container_id)
    finally:
        with anyio.fail_after(30):
            for handle in handles:
                await handle.stop(signal.SIGTERM, 5)


def test_default_names() -> None:
    assert container_name("proj:web") == "hive-proj.web"
    assert container_name("proj:web#2") == "hive-proj.web.2"
    # Dashes cannot make two FQNs meet: the separator is a dot.
    assert container_name("a-b:c") != container_name("a:b-c")
    odd = container_name("my proj:web")
    assert odd.startswith("hive-my-proj.web-") and odd != container_name("my-proj:web")


async def test_a_stale_container_of_the_same_name_is_replaced(
    engine: str, runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    spec = cspec(TRAPPING)
    old = await runner.start(spec)
    new = await runner.start(spec)
    assert new.container_id != old.container_id
    assert not listed(engine, old.container_id)
    with anyio.fail_after(30):
        await new.stop(signal.SIGTERM, 5)


# --- errors ----------------------------------------------------------------------------------


async def test_volume_leaving_the_project_is_refused(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("true", volumes=["../../etc:/data"])
    with pytest.raises(RunnerError, match=r"invalid volume '\.\./\.\./etc:/data': .* outside the project"):
        await runner.start(spec)


async def test_volume_inside_the_project(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("cat /data/note", volumes=["./sub/../sub:/data:ro"])
    project = Path(spec.working_dir)
    (project / "sub").mkdir()
    (project / "sub" / "note").write_text("from the project\n")
    handle = await runner.start(spec)
    with anyio.fail_after(30):
        assert await handle.wait() == ExitStatus(exit_code=0)
    assert read(spec.stdout_path) == "from the project\n"


async def test_invalid_port_is_refused(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    assert parse_port("80", "127.0.0.1") is None  # no ':': ignored, as the format says
    assert parse_port("8080:80", "::1") == "[::1]:8080:80/tcp"
    with pytest.raises(RunnerError, match=r"invalid port '8080:80/http'"):
        await runner.start(cspec("true", ports=["8080:80/http"]))


async def test_deny_pull_with_a_missing_image(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("true", image=MISSING_IMAGE, deny_pull=True)
    with pytest.raises(RunnerError) as caught:
        await runner.start(spec)
    assert str(caught.value) == f"image {MISSING_IMAGE} is not present and deny_pull is set"


async def test_failed_pull_says_why(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    spec = cspec("true", image=MISSING_IMAGE)
    with anyio.fail_after(60), pytest.raises(RunnerError) as caught:
        await runner.start(spec)
    message = str(caught.value)
    assert message.startswith(f"cannot pull image {MISSING_IMAGE}: ")
    assert "\n" not in message


def _published_network(engine: str) -> str | None:
    """A network whose containers get their ports published: podman's default one; for a
    dockerd without its default bridge (as in CI), the ``hive-test`` bridge network."""
    if engine != "docker":
        return None
    for network in ("bridge", "hive-test"):
        result = subprocess.run(["docker", "network", "inspect", network], capture_output=True, check=False)
        if result.returncode == 0:
            return network
    if os.environ.get("CI") == "true":
        pytest.fail("docker has no bridge network: run scripts/ci-engines.sh")
    pytest.skip("this dockerd has no bridge network: scripts/ci-engines.sh creates hive-test")


async def test_port_already_in_use(engine: str, runner: ContainerRunner, cspec: ContainerSpec) -> None:
    network = _published_network(engine)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = cspec("sleep 1000", ports=[f"{port}:80"], network_mode=network)
        with pytest.raises(RunnerError) as caught:
            await runner.start(spec)
    assert str(caught.value) == f"port 127.0.0.1:{port} is already in use"
    name = container_name(spec.fqn)
    result = await anyio.run_process([engine, "ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.ID}}"])
    assert result.stdout.strip() == b""  # the container created but not started is gone


@pytest.mark.parametrize("engine", ["docker"], indirect=True)
async def test_the_engine_cli_is_not_needed(engine: str, cspec: ContainerSpec) -> None:
    """Everything goes through the engine's socket, cmd checks too: no `docker` on PATH
    is needed. (Not podman: its CLI starts its API service when none answers.)"""
    runner = RUNNERS[engine](binary=f"{engine}-not-here")
    handle = await runner.start(cspec(TRAPPING))
    assert isinstance(handle, ContainerHandle)
    with anyio.fail_after(30):
        assert (await handle.exec_check("true", 10)).exit_code == 0
        await handle.stop(signal.SIGTERM, 10)


async def test_engine_not_reachable(engine: str, runner: ContainerRunner, cspec: ContainerSpec,
                                    home: Path) -> None:
    nowhere = str(home / "no-engine.sock")
    with anyio.fail_after(30), pytest.raises(RunnerError) as caught:
        await runner.start(cspec("true", socket=nowhere))
    message = str(caught.value)
    display = {"docker": "Docker", "podman": "Podman"}[engine]
    assert message.startswith(f"cannot reach the {display} engine at {nowhere}: ")
    assert "\n" not in message


async def test_image_is_required(runner: ContainerRunner, cspec: ContainerSpec) -> None:
    with pytest.raises(RunnerError, match="image is required"):
        await runner.start(cspec("true", image=""))


async def test_the_wait_for_a_removed_container(
    engine: str, runner: ContainerRunner, cspec: ContainerSpec
) -> None:
    handle = await runner.start(cspec("sleep 1000"))
    await anyio.run_process([engine, "rm", "-f", handle.container_id])
    with anyio.fail_after(30):
        status = await handle.wait()
    assert status in (ExitStatus(exit_code=128 + signal.SIGKILL), ExitStatus())
    await until(lambda: not listed(engine, handle.container_id), what="the container gone")
