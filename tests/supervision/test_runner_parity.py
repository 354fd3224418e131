"""A service behaves the same whatever runs it: the supervision behaviours, run over the
script runner and the container runners (docker, podman) against real engines.

Container services get the project mounted at /work (a relative volume) and host
networking; their commands `cd /work` first, so one command text works for every runner,
and run under a shell that ends on SIGTERM (a shell as PID 1 would ignore it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient, ServiceCrashed, ServiceRestarting
from runners.compose import project_name
from tests.engines import IMAGE, require_engine
from tests.supervision.conftest import Events
from tests.support import run_cli, start_daemon, wait_until, write_project

pytestmark = pytest.mark.anyio

KINDS = ["script", "docker", "podman", "compose-docker", "compose-podman"]
# The compose implementation each compose kind names in [runners.compose].
COMPOSE = {
    "compose-docker": ["docker-compose"],
    "compose-podman": [str(Path(sys.executable).with_name("podman-compose"))],
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Kind:
    name: str
    project: Path
    files: int = 0  # compose files written

    @property
    def container(self) -> bool:
        return self.name != "script"

    @property
    def engine(self) -> str:
        """The engine holding the containers."""
        return self.name.removeprefix("compose-")

    def runner(self, command: str, *, handles_term: bool = False) -> str:
        """The `runner:` mapping that runs ``command`` (a sh script) in the project dir.
        In a container, unless the command ``handles_term`` itself, it runs under a shell
        that exits on SIGTERM as a killed script would (a shell as PID 1 ignores it)."""
        if not self.container:
            return f"{{type: script, script: {{run: {_quote(command)}}}}}"
        if handles_term:
            script = f"cd /work && {command}"
        else:
            script = f"trap 'exit 143' TERM; cd /work && {{ {command}; }} & wait $!"
        if self.name.startswith("compose-"):
            self.files += 1
            service = f"s{self.files}"
            compose = {"services": {service: {
                "image": IMAGE, "command": ["sh", "-c", script.replace("$", "$$")],
                "volumes": ["./:/work"], "network_mode": "host",
                "environment": {"HIVE_INSTANCE": "${HIVE_INSTANCE}"},
            }}}
            name = f"compose-{self.files}.yaml"
            (self.project / name).write_text(json.dumps(compose))
            return f"{{type: compose, compose: {{file: {name}, service: {service}}}}}"
        return (f"{{type: {self.name}, {self.name}: {{image: {IMAGE}, command: [sh, -c, {_quote(script)}], "
                f"volumes: ['./:/work'], network_mode: host}}}}")

    def inside(self, name: str) -> str:
        """The path of project file ``name`` as the service (and its cmd checks) see it."""
        return f"/work/{name}" if self.container else str(self.project / name)

    def crash(self, info_pid: int | None, container_id: str | None) -> None:
        """Kill the running instance from outside, as a crash would."""
        if self.container:
            assert container_id
            subprocess.run([self.engine, "kill", container_id], check=True, capture_output=True, timeout=60)
        else:
            assert info_pid
            os.kill(info_pid, signal.SIGKILL)

    def leftovers(self, fqn: str) -> list[str]:
        """Containers (or processes) of ``fqn`` still there."""
        if self.name.startswith("compose-"):
            label = f"label=com.docker.compose.project={project_name(fqn)}"
        elif self.container:
            label = f"label=hive.fqn={fqn}"
        else:
            from tests.support import pids_of_service

            return [str(pid) for pid in pids_of_service(fqn)]
        listed = subprocess.run([self.engine, "ps", "-a", "-q", "--filter", label],
                                capture_output=True, text=True, timeout=60)
        return listed.stdout.split()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, home: Path, project_dir: Path) -> Kind:
    """Set up before the daemon (the cleanup fixture is autouse): a compose kind names its
    implementation in the daemon config."""
    name: str = request.param
    if name != "script":
        require_engine(name.removeprefix("compose-"), *COMPOSE.get(name, [])[:1])
    if name in COMPOSE:
        (home / "config.toml").write_text(f"[runners.compose]\ncommand = {json.dumps(COMPOSE[name])}\n")
    project_dir.mkdir(parents=True, exist_ok=True)
    return Kind(name, project_dir)


@pytest.fixture(autouse=True)
def cleanup(kind: Kind) -> Iterator[None]:
    """Set up first, torn down last (after the daemon): nothing of a failed test is left
    in the engine."""
    yield
    if kind.container:
        found = subprocess.run([kind.engine, "ps", "-a", "--format", "{{.ID}} {{.Names}}"],
                               capture_output=True, text=True, timeout=60).stdout.splitlines()
        ids = [line.split()[0] for line in found
               if line.split()[1:] and line.split()[1].startswith(("hive-p.", "hive-p_", "hive-p-"))]
        if ids:
            subprocess.run([kind.engine, "rm", "-f", *ids], capture_output=True, timeout=120)


def _project(kind: Kind, body: str) -> None:
    write_project(kind.project, 'version: "1"\nservices:\n' + body)


async def test_start_logs_tail_and_follow(client: DaemonClient, events: Events, kind: Kind) -> None:
    _project(kind, f"""
  talker:
    runner: {kind.runner('i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.05; done')}
""")
    await client.add_source(kind.project, name="p", start=True)
    info = await client.get_service_status("p:talker")
    assert info.state == "running"
    assert info.runner == kind.name.partition("-")[0]
    assert (info.container_id is not None) == kind.container

    async with client.stream_logs("p:talker", tail=3) as stream:
        seen: list[int] = []
        with anyio.fail_after(30):
            async for line in stream:
                if line.stream == "stdout" and line.message.startswith("line "):
                    seen.append(int(line.message.split()[1]))
                if len(seen) >= 6:
                    break
    # the tail, then live lines, in order and without gaps
    assert seen == list(range(seen[0], seen[0] + 6))
    tail = [line.message for line in await client.get_logs("p:talker", lines=2) if line.stream == "stdout"]
    assert len(tail) == 2 and tail[0].startswith("line ")


async def test_crash_restarts_with_backoff(client: DaemonClient, events: Events, kind: Kind) -> None:
    _project(kind, f"""
  flaky:
    runner: {kind.runner('echo run >> runs; exit 3')}
    restart: {{policy: on-failure, delay: 0.1s, max_delay: 5s, jitter: false}}
""")
    await client.add_source(kind.project, name="p", start=True)
    crash = await events.expect("service_crashed", "p:flaky", timeout=60)
    assert isinstance(crash, ServiceCrashed)
    assert crash.exit_code == 3
    delays = []
    for _ in range(3):
        restarting = await events.expect("service_restarting", "p:flaky", timeout=60)
        assert isinstance(restarting, ServiceRestarting)
        delays.append(round(restarting.delay, 3))
    assert delays == [0.1, 0.2, 0.4]
    await client.stop_service("p:flaky")
    assert (await client.get_service_status("p:flaky")).state == "stopped"


async def test_commanded_stop_is_not_restarted(client: DaemonClient, events: Events, kind: Kind) -> None:
    _project(kind, f"""
  steady:
    runner: {kind.runner('exec sleep 1000')}
    restart: always
""")
    await client.add_source(kind.project, name="p", start=True)
    await client.stop_service("p:steady")
    info = await client.get_service_status("p:steady")
    assert (info.state, info.restart_count, info.desired) == ("stopped", 0, "stopped")
    assert not [e for e in events.seen if e.__struct_config__.tag in ("service_crashed", "service_restarting")]
    assert kind.leftovers("p:steady") == []


async def test_stop_waits_the_grace_period_then_kills(client: DaemonClient, kind: Kind) -> None:
    _project(kind, f"""
  stubborn:
    runner: {kind.runner("trap '' TERM; echo ready > ready; while true; do sleep 0.1; done", handles_term=True)}
    stop_grace: 1s
""")
    await client.add_source(kind.project, name="p", start=True)
    await wait_until(lambda: (kind.project / "ready").exists(), timeout=30, what="the service to trap TERM")
    began = anyio.current_time()
    await client.stop_service("p:stubborn")
    assert anyio.current_time() - began >= 1.0  # it waited the grace before the kill
    assert (await client.get_service_status("p:stubborn")).state == "stopped"
    assert kind.leftovers("p:stubborn") == []


async def test_cmd_health_check_turns_unhealthy_and_healthy(client: DaemonClient, events: Events, kind: Kind) -> None:
    marker = kind.project / "healthy"
    marker.touch()
    _project(kind, f"""
  checked:
    runner: {kind.runner('exec sleep 1000')}
    rollout: {{type: recreate, recreate: {{ports: {{}}}}}}
    healthcheck: {{type: cmd, cmd: {{command: {_quote('test -f ' + kind.inside('healthy'))}, interval: 100ms, retries: 1}}}}
""")
    await client.add_source(kind.project, name="p", start=True)
    await events.expect("service_health_changed", "p:checked", where=lambda e: e.healthy, timeout=60)
    marker.unlink()
    await events.expect("service_health_changed", "p:checked", where=lambda e: not e.healthy, timeout=60)
    assert (await client.get_service_status("p:checked")).state == "unhealthy"
    marker.touch()
    await events.expect("service_health_changed", "p:checked", where=lambda e: e.healthy, timeout=60)
    assert (await client.get_service_status("p:checked")).state == "running"


async def test_scale_to_three_and_back_to_one(client: DaemonClient, kind: Kind) -> None:
    _project(kind, f"""
  worker:
    runner: {kind.runner('echo up > inst-$HIVE_INSTANCE; exec sleep 1000')}
""")
    await client.add_source(kind.project, name="p", start=True)
    await client.scale_service("p:worker", 3)
    listed = await client.list_services("p")
    assert [(s.fqn, s.state) for s in listed] == [
        ("p:worker", "running"), ("p:worker#1", "running"), ("p:worker#2", "running")]
    for index in range(3):
        await wait_until(lambda i=index: (kind.project / f"inst-{i}").exists(), timeout=30, what=f"instance {index}")
    if kind.container:
        assert len({s.container_id for s in listed}) == 3
    await client.scale_service("p:worker", 1)
    assert [s.fqn for s in await client.list_services("p")] == ["p:worker"]
    assert kind.leftovers("p:worker#1") == [] and kind.leftovers("p:worker#2") == []


async def test_daemon_kill9_then_adoption(hive_env: Path, kind: Kind) -> None:
    _project(kind, f"""
  web:
    runner: {kind.runner('echo start >> starts; exec sleep 1000')}
    restart: {{policy: always, delay: 0s}}
""")
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await client.add_source(kind.project, name="p", start=True)
        before = await client.get_service_status("p:web")
        assert before.state == "running"
    daemon.kill9()

    result = run_cli("start")
    assert result.returncode == 0, result.stderr
    try:
        socket_path = hive_env / "hive.sock"
        async with DaemonClient(socket_path, timeout=60) as client, client.subscribe_events() as stream:
            events = Events(client, stream)
            after = await client.get_service_status("p:web")
            assert after.state == "running"
            assert (after.pid, after.container_id) == (before.pid, before.container_id)  # adopted
            assert (kind.project / "starts").read_text().count("start") == 1
            kind.crash(after.pid, after.container_id)
            await events.expect("service_restarting", "p:web", timeout=60)
            await events.expect("service_started", "p:web", timeout=60)
            again = await client.get_service_status("p:web")
            assert again.state == "running"
            assert (again.pid, again.container_id) != (before.pid, before.container_id)
    finally:
        run_cli("stop")
        if not kind.container and before.pid and psutil.pid_exists(before.pid):
            os.kill(before.pid, signal.SIGKILL)
