"""hive_client against a real daemon, on asyncio and on trio."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from pathlib import Path

import anyio
import pytest

from hive_client import (
    BlockingClient,
    DaemonClient,
    DaemonNotRunning,
    DaemonReloaded,
    DaemonShutdown,
    HiveError,
    InvalidRequest,
    NotFound,
    RequestTimeout,
)
from hive_client.protocol import StopStream
from tests.support import DaemonProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_status_and_ping(daemon: DaemonProcess) -> None:
    async with DaemonClient(daemon.socket) as client:
        await client.ping()
        status = await client.status()
        assert status.pid == daemon.pid
        assert client.welcome is not None
        assert client.welcome.pid == daemon.pid


async def test_default_socket_from_hive_home(daemon: DaemonProcess) -> None:
    async with DaemonClient() as client:  # HIVE_HOME points at the daemon's home
        assert (await client.status()).socket == str(daemon.socket)


async def test_concurrent_calls_on_one_connection(daemon: DaemonProcess) -> None:
    results: list[int] = []
    async with DaemonClient(daemon.socket) as client:

        async def call() -> None:
            results.append((await client.status()).pid or 0)

        async with anyio.create_task_group() as tg:
            for _ in range(300):
                tg.start_soon(call)
    assert results == [daemon.pid] * 300


async def test_event_stream_follows_live(daemon: DaemonProcess) -> None:
    async with DaemonClient(daemon.socket) as client:
        async with client.subscribe_events(["daemon_reloaded"]) as events:
            assert events.stream_id
            await client.reload()
            with anyio.fail_after(10):
                event = await events.__anext__()
        assert isinstance(event, DaemonReloaded)
        assert event.ok
        assert event.seq > 0
        assert event.timestamp is not None


async def test_replay_since_seq(daemon: DaemonProcess) -> None:
    async with DaemonClient(daemon.socket) as client:
        await client.reload()
        await client.reload()
        async with client.subscribe_events(since_seq=0) as events:
            seen = []
            with anyio.fail_after(10):
                async for event in events:
                    seen.append(event)
                    if len(seen) == 3:
                        break
        kinds = [e.__struct_config__.tag for e in seen]
        assert kinds == ["daemon_started", "daemon_reloaded", "daemon_reloaded"]
        assert [e.seq for e in seen] == [1, 2, 3]


async def test_unknown_event_kind_is_refused(daemon: DaemonProcess) -> None:
    async with DaemonClient(daemon.socket) as client:
        with pytest.raises(InvalidRequest, match="unknown event kind"):
            async with client.subscribe_events(["bogus"]):
                pass


async def test_stopping_a_stream(daemon: DaemonProcess) -> None:
    async with DaemonClient(daemon.socket) as client:
        events = client.subscribe_events()
        await events.open()
        await events.aclose()
        with pytest.raises(NotFound):
            await client._call(StopStream(stream_id="nope"), StopStream, 5)  # type: ignore[type-var]
        await client.ping()  # the connection is still fine


async def test_shutdown_event_reaches_followers(hive_env: Path) -> None:
    from tests.support import start_daemon

    daemon = start_daemon(hive_env)
    try:
        async with (
            DaemonClient(daemon.socket) as client,
            client.subscribe_events(["daemon_shutdown"]) as events,
        ):
            os.kill(daemon.pid, signal.SIGTERM)
            with anyio.fail_after(10):
                received = [event async for event in events]
        assert [type(e) for e in received] == [DaemonShutdown]
        assert events.end_reason == "complete"
    finally:
        daemon.stop()


async def test_not_running() -> None:
    with pytest.raises(DaemonNotRunning, match="hive start"):
        async with DaemonClient("/tmp/hive-no-such-dir/hive.sock"):
            pass


async def test_per_call_timeout() -> None:
    """A daemon that accepts but never answers: the call fails at its deadline."""
    directory = tempfile.mkdtemp(prefix="hvt-", dir="/tmp")
    path = os.path.join(directory, "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen()
    try:
        with pytest.raises(RequestTimeout, match=r"no answer within 0\.2"):
            async with DaemonClient(path, timeout=0.2):
                pass
    finally:
        mute.close()
        os.unlink(path)
        os.rmdir(directory)


async def test_daemon_gone_mid_call(hive_env: Path) -> None:
    from tests.support import start_daemon

    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.ping()
        daemon.kill9()
        with pytest.raises(HiveError):
            await client.status()


def test_blocking_client(daemon: DaemonProcess) -> None:
    with BlockingClient(daemon.socket, timeout=10) as client:
        assert client.status().pid == daemon.pid
        client.ping()
        with client.subscribe_events(since_seq=0) as events:
            first = next(iter(events))
        assert first.__struct_config__.tag == "daemon_started"
        client.ping()


def test_blocking_client_not_running() -> None:
    with pytest.raises(DaemonNotRunning):
        BlockingClient("/tmp/hive-no-such-dir/hive.sock").connect()
