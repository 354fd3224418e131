"""A compose project's networks: removed when the last of its containers is gone.

``compose up`` creates the project's networks (``<project>_default``, those the file
declares); Hive runs no ``compose down`` (it would stop every service of the project), so
without this they would stay after ``hive down`` (and exhaust Docker's address pools
after some thirty projects). After a compose container is stopped and removed, the
networks labelled with the project are removed, each one the engine agrees to: one a
container still uses is refused, and stays for that container's own stop.

A ``compose up`` (or ``run``) of the same project in this daemon may be creating a
network at that moment: :class:`ProjectNetworks` keeps the removal from running while
one is under way (the container it starts removes the networks at its own stop).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio

from ._container_runner import ContainerRunner
from ._engine_api import filters
from .base import RunnerError

__all__ = ["PROJECT_LABEL", "ProjectNetworks"]

PROJECT_LABEL = "com.docker.compose.project"
# The removal is cleanup after a stop: bounded, and done even when the stop is cancelled.
REMOVE_TIMEOUT = 30.0


class ProjectNetworks:
    """Compose runs and network removals of this daemon, per project."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._running: dict[str, int] = {}  # project: compose commands under way

    @contextlib.asynccontextmanager
    async def using(self, project: str) -> AsyncIterator[None]:
        """Around a compose command that may create the project's networks."""
        async with self._lock:  # not while a removal runs
            self._running[project] = self._running.get(project, 0) + 1
        try:
            yield
        finally:
            self._running[project] -= 1
            if not self._running[project]:
                del self._running[project]

    async def remove_unused(self, engine: ContainerRunner, project: str, socket: str | None) -> None:
        """Remove the project's networks no container uses (none while a compose command of
        the project runs here); whatever fails is left (the engine away, one in use)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(REMOVE_TIMEOUT):
            async with self._lock:
                if project not in self._running:
                    with contextlib.suppress(RunnerError):
                        await _remove(engine, project, socket)


async def _remove(engine: ContainerRunner, project: str, socket: str | None) -> None:
    api = engine.api(socket)
    listed = await api.request("GET", "/networks", params=filters(label=[f"{PROJECT_LABEL}={project}"]))
    for network in listed or []:
        if isinstance(network, dict) and network.get("Id"):
            with contextlib.suppress(RunnerError):  # 403: still in use
                await api.request("DELETE", f"/networks/{network['Id']}")
