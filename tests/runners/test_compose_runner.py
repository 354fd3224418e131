"""The compose runner against real implementations (docker-compose with the Docker engine,
podman-compose with podman): output, exit, stop, adoption, the implementation's choice,
and its errors. Supervision through the daemon is in tests/supervision/test_runner_parity.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
import pytest

from runners.base import ExitStatus, RunnerError, RunSpec
from runners.compose import ComposeHandle, ComposeRunner, project_name
from tests.engines import IMAGE, require_engine
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import TAG_VAR, children_seen, engines_own, output_contains, read, tag_of

pytestmark = pytest.mark.anyio

IMPLEMENTATIONS = {
    "docker-compose": (["docker-compose"], "docker"),
    "podman-compose": ([str(Path(sys.executable).with_name("podman-compose"))], "podman"),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> tuple[list[str], str]:
    command, engine = IMPLEMENTATIONS[request.param]
    require_engine(engine, command[0])
    return command, engine


@pytest.fixture
def runner(implementation: tuple[list[str], str]) -> ComposeRunner:
    runner = ComposeRunner()
    runner.configure({"command": implementation[0]})
    return runner


ComposeSpec = Callable[..., RunSpec]


@pytest.fixture
def cspec(implementation: tuple[list[str], str], spec: SpecFactory, home: Path) -> Iterator[ComposeSpec]:
    """``cspec(shell_command)``: a compose file with one service running it; every
    container of the test's source is removed at its end."""
    source = f"t{uuid.uuid4().hex[:10]}"
    written = 0

    def factory(command: str, service: str = "app", **fields: Any) -> RunSpec:
        nonlocal written
        written += 1
        name = f"compose-{written}.yaml"
        (home / name).write_text(json.dumps({"services": {service: {
            "image": IMAGE, "command": ["sh", "-c", command], "network_mode": "host",
            "environment": {"GREETING": "${GREETING:-unset}"},
        }}}))
        config = {"file": name, "service": service}
        return spec("", fqn=f"{source}:{service}", working_dir=str(home), config=config, **fields)

    yield factory
    engine = implementation[1]
    label = f"label=com.docker.compose.project={project_name(source + ':app')}"
    # Containers, then the project's network (a file without host networking makes one;
    # left behind, they exhaust Docker's address pools after some thirty runs).
    for kind in ("container", "network"):
        listed = subprocess.run([engine, kind, "ls", "-aq" if kind == "container" else "-q", "--filter", label],
                                capture_output=True, text=True, check=False)
        if listed.stdout.split():
            subprocess.run([engine, kind, "rm", "-f", *listed.stdout.split()], capture_output=True, check=False)


TRAPPING = "trap 'exit 0' TERM; sleep 1000 & wait"


async def test_output_environment_and_exit(runner: ComposeRunner, cspec: ComposeSpec) -> None:
    spec = cspec('echo "hello $GREETING"; exit 7', env={**os.environ, "GREETING": "from-hive"})
    handle = await runner.start(spec)
    with anyio.fail_after(60):
        status = await handle.wait()
    assert status == ExitStatus(exit_code=7)
    assert "hello from-hive" in read(spec.stdout_path)  # the file interpolated Hive's env
    await handle.stop(signal.SIGTERM, 5)  # removes the exited container


async def test_stop_and_adopt(runner: ComposeRunner, cspec: ComposeSpec,
                              implementation: tuple[list[str], str]) -> None:
    spec = cspec(f"echo up; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=30)
    record = handle.record()
    assert (record["runner"], record["engine"]) == ("compose", implementation[1])
    assert record["project"] == project_name(spec.fqn) and record["service"] == "app"

    adopted = await ComposeRunner().adopt(spec, record)  # a later daemon
    assert isinstance(adopted, ComposeHandle) and adopted.container_id == handle.container_id

    # The compose file changed: not the same service any more.
    compose_file = Path(spec.working_dir) / spec.config["file"]
    compose_file.write_text(compose_file.read_text().replace("echo up", "echo changed"))
    assert await ComposeRunner().adopt(spec, record) is None

    with anyio.fail_after(60):
        assert await adopted.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)
    result = await anyio.run_process([implementation[1], "ps", "-aq", "--filter", f"id={handle.container_id}"])
    assert result.stdout.strip() == b""  # stopped and removed


async def test_adopted_by_a_daemon_started_elsewhere(
    runner: ComposeRunner, cspec: ComposeSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The next daemon starts from another directory, in another shell: its environment
    (the whole base of every service's) differs, the project does not; it adopts."""
    spec = cspec(f"echo up; {TRAPPING}", env={**os.environ, "GREETING": "hi"})
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=30)
    record = handle.record()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))
    monkeypatch.setenv("OLDPWD", "/")
    monkeypatch.setenv("HIVE_TEST_SHELL_ONLY", "a variable of the new daemon's shell")
    later = msgspec.structs.replace(spec, env={**os.environ, "GREETING": "hi", TAG_VAR: tag_of(spec)})
    adopted = await ComposeRunner().adopt(later, record)
    assert isinstance(adopted, ComposeHandle) and adopted.container_id == handle.container_id
    # A variable of the service's own that changed is another configuration.
    changed = msgspec.structs.replace(later, env={**later.env, "GREETING": "changed"})
    assert await ComposeRunner().adopt(changed, record) is None
    with anyio.fail_after(60):
        assert await adopted.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)


async def test_an_orphan_is_stopped_through_its_engine(
    runner: ComposeRunner, cspec: ComposeSpec, implementation: tuple[list[str], str]
) -> None:
    # The service and its compose file are gone: the record is enough.
    spec = cspec(f"echo up; {TRAPPING}")
    handle = await runner.start(spec)
    await output_contains(spec.stdout_path, "up", timeout=30)
    record = handle.record()
    (Path(spec.working_dir) / spec.config["file"]).unlink()
    later = ComposeRunner()
    assert await later.stop_orphan(spec.fqn, {**record, "service": "other"}, 10) is False
    with anyio.fail_after(60):
        assert await later.stop_orphan(spec.fqn, record, 10) is True
    result = await anyio.run_process([implementation[1], "ps", "-aq", "--filter", f"id={handle.container_id}"])
    assert result.stdout.strip() == b""  # stopped and removed


async def test_instances_get_their_own_project(runner: ComposeRunner, cspec: ComposeSpec) -> None:
    first = cspec(TRAPPING)
    second = RunSpec(**{**{f: getattr(first, f) for f in first.__struct_fields__}, "fqn": first.fqn + "#1"})
    one = await runner.start(first)
    two = await runner.start(second)
    try:
        assert one.container_id != two.container_id
        assert (one.project, two.project) == (project_name(first.fqn), project_name(first.fqn) + "-1")
    finally:
        with anyio.fail_after(60):
            await one.stop(signal.SIGTERM, 5)
            await two.stop(signal.SIGTERM, 5)


async def test_compose_error_is_one_line(runner: ComposeRunner, cspec: ComposeSpec, home: Path) -> None:
    spec = cspec("true")
    (home / spec.config["file"]).write_text('{"services": {"app": {"image": "localhost/hive-test-missing:nope", '
                                            '"pull_policy": "never"}}}')
    with anyio.fail_after(120), pytest.raises(RunnerError) as caught:
        await runner.start(spec)
    message = str(caught.value)
    assert message.startswith("compose up failed: ") and "\n" not in message
    assert "localhost/hive-test-missing:nope" in message  # the cause, not a consequence


def test_settings_are_checked() -> None:
    runner = ComposeRunner()
    with pytest.raises(RunnerError, match="unknown setting 'binary' \\(known: command\\)"):
        runner.configure({"binary": "x"})
    with pytest.raises(RunnerError, match="command must be a list of words"):
        runner.configure({"command": []})
    runner.configure({"command": "podman-compose"})  # one word


async def test_nothing_installed_says_what_to_do(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("PATH", str(home))
    with pytest.raises(RunnerError, match=r"no compose implementation found .* install one, or name it"):
        await ComposeRunner().implementation()


async def test_no_helper_process_per_container(runner: ComposeRunner, cspec: ComposeSpec, home: Path) -> None:
    """On the engine's API, a compose service's output, exit and stop cost no process: the
    test's process has no child while three run and print, nor while they stop. The engine's
    own processes do not count: podman's API service may be a child, and it runs ``runc``."""
    before = set(psutil.Process().children(recursive=True))  # what earlier tests left is theirs
    specs = [cspec(f"echo up {index}; {TRAPPING}", service=f"app{index}",
                   stdout_path=str(home / f"app{index}.out"), stderr_path=str(home / f"app{index}.err"))
             for index in range(3)]
    handles = [await runner.start(spec) for spec in specs]

    def owned(process: psutil.Process) -> bool:
        return process not in before and not engines_own(process, before)

    with children_seen(os.getpid(), keep=owned) as seen:
        async with anyio.create_task_group() as tasks:
            for handle in handles:
                tasks.start_soon(handle.wait)
            for index, spec in enumerate(specs):
                await output_contains(spec.stdout_path, f"up {index}\n", timeout=30)
            with anyio.fail_after(60):
                for handle in handles:  # another signal than the container's: a kill
                    assert await handle.stop(signal.SIGKILL, 10) == ExitStatus(exit_code=128 + signal.SIGKILL)
    assert seen == set()


async def test_another_services_required_variable_does_not_stop_this_one(
    runner: ComposeRunner, cspec: ComposeSpec, home: Path
) -> None:
    """Compose fills in the file with the started service's environment: a ``${VAR:?}``
    of another service (which gets its variables when it starts) is not this one's error,
    while its own still is."""
    spec = cspec('echo "hello $GREETING"')
    compose_file = home / spec.config["file"]
    content = json.loads(compose_file.read_text())
    content["services"]["other"] = {
        "image": IMAGE, "command": ["sh", "-c", "echo $$SECRET"], "network_mode": "host",
        "environment": {"SECRET": "${HIVE_TEST_OTHERS_SECRET:?the other service needs it}"},
        "labels": {"price": "$$5 and ${HIVE_TEST_OTHERS_LABEL}"},
    }
    compose_file.write_text(json.dumps(content))
    alone = msgspec.structs.replace(spec, env={**spec.env, "GREETING": "alone"})
    handle = await runner.start(alone)
    with anyio.fail_after(60):
        assert await handle.wait() == ExitStatus(exit_code=0)
        await handle.stop(signal.SIGTERM, 5)
    assert "hello alone" in read(spec.stdout_path)
    # A hook step of the service reads the file the same way.
    lines: list[str] = []
    with anyio.fail_after(120):
        assert await runner.run_once(alone, lambda stream, line: lines.append(line)) == 0
    assert "hello alone" in lines

    # Its own required variable, unset, is still an error, in compose's words.
    content["services"]["app"]["environment"]["MINE"] = "${HIVE_TEST_MINE:?app needs it}"
    compose_file.write_text(json.dumps(content))
    with anyio.fail_after(120), pytest.raises(RunnerError, match="app needs it"):
        await runner.start(spec)


def _project_networks(engine: str, project: str) -> list[str]:
    listed = subprocess.run([engine, "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                            capture_output=True, text=True, check=True, timeout=60)
    return listed.stdout.split()


def _resolves_names(engine: str) -> bool:
    """Whether containers on a network of ``engine`` find each other by name here (podman
    with CNI needs its dnsname plugin)."""
    if engine == "docker":
        return True
    backend = subprocess.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"],
                             capture_output=True, text=True, check=False, timeout=60).stdout.strip()
    return backend == "netavark" or any(Path(d, "dnsname").exists() for d in ("/usr/lib/cni", "/opt/cni/bin"))


async def test_services_reach_each_other_by_name_and_the_network_goes_with_the_last(
    runner: ComposeRunner, cspec: ComposeSpec, implementation: tuple[list[str], str], home: Path
) -> None:
    """The compose services of one source are one project on its own network: one reaches
    another by its service name; the network is removed when the last of them stops."""
    engine = implementation[1]
    server_spec = cspec("true", service="server")
    client_spec = cspec("true", service="client", stdout_path=str(home / "client.out"),
                        stderr_path=str(home / "client.err"))
    document = {"services": {
        "server": {"image": IMAGE, "command": [
            "sh", "-c", "echo hello-by-name > /tmp/index.html; echo serving; exec httpd -f -p 8080 -h /tmp"]},
        "client": {"image": IMAGE, "command": [
            "sh", "-c", "until wget -q -O- http://server:8080/index.html; do sleep 0.1; done"]},
    }}
    (home / server_spec.config["file"]).write_text(json.dumps(document))
    client_spec = msgspec.structs.replace(client_spec, config=server_spec.config | {"service": "client"})
    project = project_name(server_spec.fqn)

    server = await runner.start(server_spec)
    await output_contains(server_spec.stdout_path, "serving", timeout=30)
    assert len(_project_networks(engine, project)) == 1
    if _resolves_names(engine):
        client = await runner.start(client_spec)
        with anyio.fail_after(60):
            assert await client.wait() == ExitStatus(exit_code=0)
        assert "hello-by-name" in read(client_spec.stdout_path)
        with anyio.fail_after(60):
            await client.stop(signal.SIGTERM, 5)
        assert len(_project_networks(engine, project)) == 1  # the server still uses it
    with anyio.fail_after(60):
        await server.stop(signal.SIGKILL, 5)
    assert _project_networks(engine, project) == []
