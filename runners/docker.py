"""The docker runner: a service is a container run by the Docker engine, through its
HTTP API (see :mod:`runners._api_container`; the block is :mod:`runners._container`'s)."""

from __future__ import annotations

from typing import ClassVar

from ._api_container import ApiContainerRunner
from ._container import ContainerHandle

__all__ = ["ContainerHandle", "DockerRunner"]


class DockerRunner(ApiContainerRunner):
    """``docker`` block: runs the service's container through the Docker Engine API."""

    name: ClassVar[str] = "docker"
    engine: ClassVar[str] = "docker"
    display: ClassVar[str] = "Docker"
    replace_flag: ClassVar[bool] = False  # no `run --replace`: a name conflict costs an `rm -f`
