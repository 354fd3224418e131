"""The podman runner: a service is a container run by podman, through its
Docker-compatible API (``podman system service``, started by Hive at podman's default
socket when nothing answers there: see :mod:`runners._podman_service`). What the runner
does is :mod:`runners._container_runner`'s; this module names the engine and its differences."""

from __future__ import annotations

import re
from typing import ClassVar

from ._container_handle import ContainerHandle
from ._container_runner import ContainerRunner
from ._engine_api import Starter
from ._podman_service import PodmanService, default_podman_socket

__all__ = ["ContainerHandle", "PodmanRunner"]


class PodmanRunner(ContainerRunner):
    """``podman`` block: runs the service's container through podman's API service."""

    name: ClassVar[str] = "podman"
    engine: ClassVar[str] = "podman"
    display: ClassVar[str] = "Podman"
    unreachable_text: ClassVar[re.Pattern[str]] = re.compile(
        r"[Cc]annot connect to Podman|unable to connect to Podman"
    )
    # podman 4 returns nothing for an `event` filter: every container event comes, and
    # the engine thread keeps those of the containers it watches.
    events: ClassVar[dict[str, list[str]]] = {"type": ["container"]}
    # Its containers are held by conmon, not by the API service: the service's end ends none.
    engine_stops_containers: ClassVar[bool] = False
    # Its failed create (a name in use) builds and drops the container's storage first.
    remove_stale_first: ClassVar[bool] = True

    def default_socket(self) -> str:
        return default_podman_socket()

    def starter(self, path: str) -> Starter | None:
        if path != default_podman_socket():
            return None  # a socket named in the block or the settings: someone else's service
        return PodmanService.of(path, self.binary).ensure
