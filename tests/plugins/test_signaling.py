"""The signaling plugin against a real WebSocket server (the `websockets` library) standing
in for the signaling server: spawns become real cocoon processes, each answered; terminate
removes them; a spawn that cannot run gets an error result; a dropped connection is
re-opened, and the hive registers again with the cocoons it still runs; a server process
killed (SIGKILL, SIGTERM) and started again loses no spawn and runs none twice."""

from __future__ import annotations

import functools
import http.client
import json
import shutil
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from hive_client import DaemonClient
from tests.engines import require_engine
from tests.plugins.conftest import StartWith
from tests.proxy.conftest import free_port
from tests.support import wait_until

pytestmark = pytest.mark.anyio


class SignalingServer:
    """Accepts the hive's connections; what it receives is queued for the test."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.connections: list[ServerConnection] = []
        self.authorizations: list[str | None] = []
        self._arrived = anyio.Event()

    async def handler(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        assert connection.request is not None
        self.authorizations.append(connection.request.headers.get("Authorization"))
        try:
            async for raw in connection:
                self.received.append(json.loads(raw))
                self._arrived.set()
        except ConnectionClosed:
            pass  # the tests end connections in every way

    async def send(self, **message: Any) -> None:
        await self.connections[-1].send(json.dumps({"v": 1, **message}))

    async def expect(self, kind: str, count: int = 1, *, timeout: float = 60) -> list[dict[str, Any]]:
        """The first ``count`` messages of ``kind`` not taken yet (taken now)."""
        with anyio.fail_after(timeout):
            while True:
                found = [m for m in self.received if m.get("type") == kind]
                if len(found) >= count:
                    for message in found[:count]:
                        self.received.remove(message)
                    return found[:count]
                self._arrived = anyio.Event()
                await self._arrived.wait()


@pytest.fixture
async def server() -> AsyncIterator[tuple[SignalingServer, str]]:
    fake = SignalingServer()
    async with serve(fake.handler, "127.0.0.1", 0) as listening:
        port = next(iter(listening.sockets)).getsockname()[1]
        yield fake, f"ws://127.0.0.1:{port}"


@pytest.fixture
def cocoon_script(home: Path) -> Path:
    script = home / "cocoon.sh"
    script.write_text('#!/bin/sh\necho "cocoon $COCOON_ID up"\nexec sleep 1000\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _settings(url: str, **extra: Any) -> str:
    lines = [f"{key} = {json.dumps(value)}" for key, value in
             {"url": url, "hive_id": "hive-1", "capacity": 30, "reconnect_initial": 0.1,
              "reconnect_max": 0.5, **extra}.items()]
    # No scope: spawning adds a source and creates services, and the plugin's default is admin.
    return "[plugins.signaling]\n[plugins.signaling.settings]\n" + "\n".join(lines) + "\n"


async def test_spawn_terminate_and_reconnect(start_with: StartWith, server: tuple[SignalingServer, str],
                                             cocoon_script: Path, hive_env: Path) -> None:
    fake, url = server
    daemon = start_with(_settings(url, runner="script", script_path=str(cocoon_script)))
    [register] = await fake.expect("register")
    assert (register["v"], register["hive_id"], register["capacity"], register["cocoons"]) == (1, "hive-1", 30, [])
    # Only the runners this machine can run.
    assert register["runners"] == ["script", *(e for e in ("docker", "podman") if shutil.which(e))]

    for n in range(20):
        await fake.send(type="spawn_cocoon", request_id=f"r{n}", cocoon_id=f"c{n}", env={"ROLE": "worker"})
    results = await fake.expect("spawn_cocoon_result", 20)
    assert sorted((r["request_id"], r["ok"], r["fqn"]) for r in results) == sorted(
        (f"r{n}", True, f"cocoons:cocoon-c{n}") for n in range(20))
    async with DaemonClient(daemon.socket, timeout=60) as client:
        cocoons = await client.list_services("cocoons")
        assert len(cocoons) == 20 and {c.state for c in cocoons} == {"running"}
        assert all(c.pid and psutil.pid_exists(c.pid) for c in cocoons)
        pids = [c.pid for c in cocoons]
        logs = [line.message for line in await client.get_logs("cocoons:cocoon-c7", lines=5)]
        assert "cocoon c7 up" in logs

        # The server goes away: the hive comes back and lists what it still runs.
        await fake.connections[-1].close()
        [again] = await fake.expect("register")
        assert sorted(c["cocoon_id"] for c in again["cocoons"]) == sorted(f"c{n}" for n in range(20))
        assert len(fake.connections) == 2

        await fake.send(type="get_status", request_id="s1")
        [status] = await fake.expect("status")
        assert status["request_id"] == "s1" and len(status["cocoons"]) == 20

        for n in range(20):
            await fake.send(type="terminate_cocoon", request_id=f"t{n}", cocoon_id=f"c{n}")
        ended = await fake.expect("terminate_cocoon_result", 20)
        assert all(r["ok"] for r in ended)
        assert await client.list_services("cocoons") == []
        await wait_until(lambda: not any(pid and psutil.pid_exists(pid) and
                                         psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids),
                         timeout=30, what="the cocoon processes to end")

        # A script that is not there: an error result, not silence (new settings on reload).
        (hive_env / "config.toml").write_text(_settings(url, runner="script", script_path=str(hive_env / "gone.sh")))
        await client.reload()
        await fake.send(type="spawn_cocoon", request_id="bad", cocoon_id="nope")
        [failed] = await fake.expect("spawn_cocoon_result")
        assert failed["ok"] is False and failed["request_id"] == "bad"
        assert failed["error"] == f"cocoon script {hive_env / 'gone.sh'} does not exist or is not executable"

        # Nonsense gets an error message back.
        await fake.send(type="spawn_cocoon", request_id="x", cocoon_id="../etc")
        [invalid] = await fake.expect("spawn_cocoon_result")
        assert invalid["ok"] is False and "invalid cocoon_id" in invalid["error"]
        await fake.connections[-1].send("not json")
        [error] = await fake.expect("error")
        assert error["message"].startswith("unreadable message")


async def test_a_bad_image_gets_an_error_result(start_with: StartWith, server: tuple[SignalingServer, str]) -> None:
    require_engine("docker")
    fake, url = server
    start_with(_settings(url, runner="docker"))
    await fake.expect("register")
    await fake.send(type="spawn_cocoon", request_id="img", cocoon_id="img1", image="localhost/hive-test-missing:nope")
    [result] = await fake.expect("spawn_cocoon_result", timeout=120)
    assert result["ok"] is False and result["cocoon_id"] == "img1"
    assert "localhost/hive-test-missing:nope" in result["error"]


async def _plugin(client: DaemonClient) -> Any:
    return {p.name: p for p in await client.list_plugins()}["signaling"]


async def test_any_end_of_the_connection_reconnects(start_with: StartWith, server: tuple[SignalingServer, str],
                                                    cocoon_script: Path) -> None:
    fake, url = server
    daemon = start_with(_settings(url, runner="script", script_path=str(cocoon_script), token="s3cret"))
    await fake.expect("register")
    assert fake.authorizations == ["Bearer s3cret"]
    # Dropped without a close frame (a server killed with SIGKILL looks like this).
    fake.connections[-1].transport.abort()
    await fake.expect("register")
    # A frame over the client's size limit (1 MiB).
    await fake.connections[-1].send("x" * (2**20 + 1))
    await fake.expect("register")
    # Closed while a spawn is in flight: its answer comes after the next registration.
    await fake.send(type="spawn_cocoon", request_id="mid", cocoon_id="mid1")
    await fake.connections[-1].close()
    await fake.expect("register")
    [result] = await fake.expect("spawn_cocoon_result")
    assert result["ok"] is True and result["request_id"] == "mid"
    assert len(fake.connections) == 4 and set(fake.authorizations) == {"Bearer s3cret"}
    async with DaemonClient(daemon.socket, timeout=60) as client:
        plugin = await _plugin(client)
        assert plugin.state == "running" and plugin.failed == 0
        assert [s.name for s in await client.list_services("cocoons")] == ["cocoon-mid1"]


async def test_capacity_crashes_and_a_removed_source(start_with: StartWith, server: tuple[SignalingServer, str],
                                                     home: Path) -> None:
    fake, url = server
    script = home / "dir with space" / "cocoon.sh"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nif [ -n "$CRASH" ]; then exit 3; fi\nexec sleep 1000\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    daemon = start_with(_settings(url, runner="script", script_path=str(script), capacity=3))
    await fake.expect("register")
    for n in range(2):
        await fake.send(type="spawn_cocoon", request_id=f"a{n}", cocoon_id=f"a{n}")
    assert all(r["ok"] for r in await fake.expect("spawn_cocoon_result", 2))
    # Four at once with room for one: one runs, three are refused.
    for n in range(4):
        await fake.send(type="spawn_cocoon", request_id=f"b{n}", cocoon_id=f"b{n}")
    results = await fake.expect("spawn_cocoon_result", 4)
    assert sum(r["ok"] for r in results) == 1
    assert all("capacity of 3" in r["error"] for r in results if not r["ok"])
    async with DaemonClient(daemon.socket, timeout=60) as client:
        running = [c for c in await client.list_services("cocoons") if c.state == "running"]
        assert len(running) == 3

        # A crash is pushed without being asked.
        for name in [c.fqn for c in await client.list_services("cocoons")]:
            await client.stop_service(name)
            await client.delete_service(name)
        await fake.send(type="spawn_cocoon", request_id="crash", cocoon_id="crash1", env={"CRASH": "1"})
        with anyio.fail_after(60):
            while True:
                [state] = await fake.expect("cocoon_state")
                if state["state"] == "crashed":
                    break
        assert state["cocoon_id"] == "crash1" and state["exit_code"] == 3

        # `hive source remove cocoons`: the next spawn adds it again.
        await client.remove_source("cocoons")
        await fake.send(type="spawn_cocoon", request_id="after", cocoon_id="after1")
        [after] = [r for r in await fake.expect("spawn_cocoon_result", 2) if r["request_id"] == "after"]
        assert after["ok"] is True, after
        assert (await client.get_service_status("cocoons:cocoon-after1")).state == "running"


async def test_a_spawned_cocoon_is_reached_through_the_proxy(start_with: StartWith, server: tuple[SignalingServer, str],
                                                             home: Path) -> None:
    """Each cocoon gets a free `http` port (PORT in its environment), and the proxy's
    /cocoon/{id}/* reaches it there."""
    fake, url = server
    app = Path(__file__).parent.parent / "proxy" / "upstream_app.py"
    script = home / "http-cocoon.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {app} "$PORT" "$COCOON_ID"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    proxy_port = free_port()
    daemon = start_with(f'[proxy]\nlisten = ["127.0.0.1:{proxy_port}"]\n'
                        + _settings(url, runner="script", script_path=str(script)))
    await fake.expect("register")
    for n in range(3):
        await fake.send(type="spawn_cocoon", request_id=f"r{n}", cocoon_id=f"web{n}")
    assert all(r["ok"] for r in await fake.expect("spawn_cocoon_result", 3))
    async with DaemonClient(daemon.socket, timeout=60) as client:
        ports = {s.name: s.ports.get("http") for s in await client.list_services("cocoons")}
    assert len({p for p in ports.values() if p}) == 3, ports

    for n in range(3):
        port = ports[f"cocoon-web{n}"]
        expected = f"web{n} {port} GET /hello?q=1".encode()
        await wait_until(functools.partial(_serves, proxy_port, f"/cocoon/web{n}/hello?q=1", expected), timeout=30,
                         what=f"cocoon web{n} to answer through the proxy")
    await fake.send(type="terminate_cocoon", request_id="t0", cocoon_id="web0")
    assert (await fake.expect("terminate_cocoon_result"))[0]["ok"]
    status, body = await anyio.to_thread.run_sync(_answer, proxy_port, "/cocoon/web0/hello")
    assert status == 503 and b"cocoons:cocoon-web0 is not known to hive" in body


def _answer(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _serves(port: int, path: str, expected: bytes) -> bool:
    try:
        return _answer(port, path) == (200, expected)
    except ConnectionRefusedError:  # the proxy is not listening yet
        return False


SERVER_SCRIPT = Path(__file__).parent / "signaling_server.py"


class ServerProcess:
    """tests/plugins/signaling_server.py run as a process of its own (so it can be killed)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    async def __aenter__(self) -> ServerProcess:
        self.process = await anyio.open_process([sys.executable, str(SERVER_SCRIPT), str(self.port), str(self.log)])
        assert self.process.stdout is not None
        self.lines = BufferedByteReceiveStream(self.process.stdout)
        await self._expect(b"listening")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()

    async def _expect(self, line: bytes) -> None:
        with anyio.fail_after(60):
            assert await self.lines.receive_until(b"\n", 1000) == line

    async def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps({"v": 1, **message}) + "\n").encode())
        await self._expect(b"sent")  # written to the hive's connection

    async def kill(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)
        await self.process.wait()

    def received(self, kind: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [m for line in self.log.read_text().splitlines() if (m := json.loads(line))["type"] == kind]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_a_server_process_killed_and_started_again(start_with: StartWith, cocoon_script: Path,
                                                         hive_env: Path, signum: signal.Signals) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    wanted = {f"k{n}" for n in range(6)}
    async with ServerProcess(port, hive_env / "first.jsonl") as first:
        daemon = start_with(_settings(url, runner="script", script_path=str(cocoon_script)))
        await wait_until(lambda: first.received("register"), timeout=60, what="the first registration")
        for cocoon in sorted(wanted):
            await first.send(type="spawn_cocoon", request_id=cocoon, cocoon_id=cocoon)
        await first.kill(signum)  # the spawns are the hive's now; their answers went out, or not yet
    async with ServerProcess(port, hive_env / "second.jsonl") as second, \
            DaemonClient(daemon.socket, timeout=60) as client:

        def accounted() -> bool:
            # Each spawn answered (to the first server or, after the registration, the
            # second), or listed by the registration (its answer died with the first).
            registered = {c["cocoon_id"] for r in second.received("register") for c in r["cocoons"]}
            answered = {r["request_id"] for s in (first, second) for r in s.received("spawn_cocoon_result")}
            return bool(registered | answered >= wanted)

        await wait_until(accounted, timeout=60, what="every spawn answered or registered")
        cocoons = await client.list_services("cocoons")
        assert sorted(c.name for c in cocoons) == sorted(f"cocoon-{c}" for c in wanted)  # none lost, none twice
        # The second server asks again for the spawns it has no answer for: none runs twice.
        for cocoon in sorted(wanted):
            await second.send(type="spawn_cocoon", request_id=f"{cocoon}-again", cocoon_id=cocoon)
        await wait_until(lambda: len([r for r in second.received("spawn_cocoon_result")
                                      if r["request_id"].endswith("-again")]) == len(wanted),
                         timeout=60, what="the repeated spawns to be answered")
        answers = [r for s in (first, second) for r in s.received("spawn_cocoon_result")]
        again = [r for r in answers if r["request_id"].endswith("-again")]
        assert not any(r["ok"] for r in again)
        firsts = [r["request_id"] for r in answers if not r["request_id"].endswith("-again")]
        assert len(firsts) == len(set(firsts)) and all(r["ok"] for r in answers if r not in again)
        assert len(second.received("register")) == 1
        assert len(await client.list_services("cocoons")) == len(wanted)
        plugin = await _plugin(client)
        assert plugin.state == "running" and plugin.failed == 0
