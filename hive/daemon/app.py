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
from .settings import DaemonSettings
from .store import StateStore, StateWriter

if TYPE_CHECKING:
    from .logs import LogHub
    from .plugins import PluginManager
    from .proxy import ProxyServer
    from .server import SocketServer
    from .sources import SourceRegistry
    from .supervision import Supervisor

__all__ = ["App", "NotAttached", "ShutdownRequest"]


@dataclass(frozen=True)
class ShutdownRequest:
    graceful: bool = True
    keep_services: bool = False
    reason: str = ""


class NotAttached(RuntimeError):
    """A part of the daemon was used before start-up attached it (a bug, not a user error)."""


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
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    server: SocketServer | None = None
    version: str = __version__
    plugins: PluginManager | None = None  # once a plugin is configured
    proxy: ProxyServer | None = None  # the HTTP proxy (listens once a source has routes)
    reloader: Callable[[], Awaitable[str]] | None = None
    # The supervisor and the source registry hold the App, so they are made after it
    # and come in through attach(); until then their properties raise NotAttached.
    _services: Supervisor | None = field(default=None, init=False)
    _sources: SourceRegistry | None = field(default=None, init=False)
    _shutdown: anyio.Event = field(default_factory=anyio.Event)
    shutdown_request: ShutdownRequest | None = None

    def attach(self, services: Supervisor, sources: SourceRegistry) -> None:
        self._services = services
        self._sources = sources

    @property
    def attached(self) -> bool:
        """Whether the supervisor and the source registry are in place."""
        return self._services is not None and self._sources is not None

    @property
    def services(self) -> Supervisor:
        if self._services is None:
            raise NotAttached("app.services used before start-up attached the supervisor")
        return self._services

    @property
    def sources(self) -> SourceRegistry:
        if self._sources is None:
            raise NotAttached("app.sources used before start-up attached the source registry")
        return self._sources

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
