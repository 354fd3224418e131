"""Many clients at once: every request answered, none lost."""

from __future__ import annotations

import anyio
import pytest

from hive_client import DaemonClient
from tests.support import DaemonProcess

pytestmark = pytest.mark.anyio

CLIENTS = 100
REQUESTS = 100


async def test_100_clients_x_100_requests(daemon: DaemonProcess) -> None:
    answered = [0] * CLIENTS

    async def one_client(index: int) -> None:
        async with DaemonClient(daemon.socket, timeout=60) as client:
            for _ in range(REQUESTS):
                status = await client.status()
                assert status.pid == daemon.pid
                answered[index] += 1

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for index in range(CLIENTS):
                tg.start_soon(one_client, index)
    assert answered == [REQUESTS] * CLIENTS
    assert daemon.alive()
