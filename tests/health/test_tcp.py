"""tcp checks against real listeners."""

from __future__ import annotations

import pytest

from tests.health.helpers import make_monitor, refused_port, running, tcp_check, tcp_listener

pytestmark = pytest.mark.anyio


async def test_listening_port_passes() -> None:
    async with tcp_listener() as server:
        monitor, recorder = make_monitor([tcp_check(server.port)])
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is True
    result = change.results[0]
    assert (result.kind, result.target, result.message) == (
        "tcp", f"tcp 127.0.0.1:{server.port}", f"connected to 127.0.0.1:{server.port}"
    )
    assert change.message == f"tcp 127.0.0.1:{server.port}: connected to 127.0.0.1:{server.port}"


async def test_refused_port_fails() -> None:
    with refused_port() as port:
        monitor, recorder = make_monitor([tcp_check(port, retries=2)])
        async with running(monitor):
            change, seen = await recorder.next_change()
    assert change.healthy is False
    assert [r.consecutive_failures for r in seen] == [1, 2]
    assert change.results[0].message == f"connection refused on 127.0.0.1:{port}"


async def test_listener_going_away_and_coming_back() -> None:
    async with tcp_listener() as server:
        monitor, recorder = make_monitor([tcp_check(server.port, retries=2)])
        async with running(monitor):
            change, _ = await recorder.next_change()
            assert change.healthy is True
            await server.close()
            change, _ = await recorder.next_change()
            assert change.healthy is False
            assert change.results[0].message == f"connection refused on 127.0.0.1:{server.port}"
            assert change.results[0].consecutive_failures == 2
