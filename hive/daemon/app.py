"""What request handlers see of the daemon: its parts and its controls."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from hive_client import __version__

from .events import EventBus
from .home import HiveHome
from .settings import DaemonSettings
from .store import StateStore

if TYPE_CHECKING:
    from .server import SocketServer

__all__ = ["App", "ShutdownRequest"]


@dataclass(frozen=True)
class ShutdownRequest:
    graceful: bool = True
    keep_services: bool = False
    reason: str = ""


@dataclass
class App:
    home: HiveHome
    settings: DaemonSettings
    socket_path: Path
    bus: EventBus
    store: StateStore
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    server: SocketServer | None = None
    version: str = __version__
    # Filled in as the daemon's parts come up (see lifecycle.py).
    sources: Any = None
    services: Any = None
    logs: Any = None
    state_writer: Any = None
    plugins: Any = None  # PluginManager, once a plugin is configured
    task_group: Any = None  # the daemon's own task group (long-lived parts start in it)
    reloader: Callable[[], Awaitable[str]] | None = None
    _shutdown: anyio.Event = field(default_factory=anyio.Event)
    shutdown_request: ShutdownRequest | None = None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_request is not None

    def request_shutdown(self, request: ShutdownRequest) -> None:
        if self.shutdown_request is None:
            self.shutdown_request = request
        self._shutdown.set()

    async def wait_shutdown(self) -> ShutdownRequest:
        await self._shutdown.wait()
        assert self.shutdown_request is not None
        return self.shutdown_request

    async def reload(self) -> str:
        """Re-read the configuration and the sources; says what happened."""
        if self.reloader is None:
            return "nothing to reload"
        return await self.reloader()
