"""What request handlers see of the daemon: its parts and its controls."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from hive_client import __version__

from .events import EventBus
from .home import HiveHome
from .request_stats import RequestStats
from .settings import DaemonSettings
from .store import StateStore, StateWriter

if TYPE_CHECKING:
    from .logs import LogHub
    from .plugins import PluginManager
    from .proxy import ProxyServer
    from .server import SocketServer
    from .sources import SourceRegistry
    from .supervision import Supervisor

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
    state_writer: StateWriter
    logs: LogHub
    task_group: anyio.abc.TaskGroup  # the daemon's own (long-lived parts start in it)
    services: Supervisor
    sources: SourceRegistry
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    server: SocketServer | None = None
    version: str = __version__
    plugins: PluginManager | None = None  # once a plugin is configured
    proxy: ProxyServer | None = None  # the HTTP proxy (listens once a source has routes)
    reloader: Callable[[], Awaitable[str]] | None = None
    request_stats: RequestStats = field(default_factory=RequestStats)  # what it answered, how fast
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
