"""Fixtures for end-to-end supervision tests: a daemon, a project, an event follower."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, DaemonEvent
from tests.support import DaemonProcess


class Events:
    """A live event subscription with `expect(...)`: the next matching event, by deadline."""

    def __init__(self, client: DaemonClient, stream) -> None:
        self.client = client
        self._stream = stream
        self.seen: list[DaemonEvent] = []

    async def expect(
        self,
        kind: str,
        fqn: str | None = None,
        *,
        timeout: float = 15.0,
        where: Callable[[DaemonEvent], bool] | None = None,
    ) -> DaemonEvent:
        with anyio.fail_after(timeout):
            async for event in self._stream:
                self.seen.append(event)
                if event.__struct_config__.tag != kind:
                    continue
                if fqn is not None and getattr(event, "fqn", None) != fqn:
                    continue
                if where is not None and not where(event):
                    continue
                return event
        raise AssertionError(f"stream ended before {kind} {fqn}")


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[DaemonClient]:
    async with DaemonClient(daemon.socket, timeout=60) as connected:
        yield connected


@pytest.fixture
async def events(client: DaemonClient) -> AsyncIterator[Events]:
    async with client.subscribe_events() as stream:
        yield Events(client, stream)


@pytest.fixture
def project_dir(home: Path) -> Path:
    return home / "proj"
