"""The docker runner: a service is a container run by the Docker engine, through its
HTTP API (see :mod:`runners._container_runner`; the block is :mod:`runners._container`'s)."""

from __future__ import annotations

from typing import ClassVar

from ._container_handle import ContainerHandle
from ._container_runner import ContainerRunner

__all__ = ["ContainerHandle", "DockerRunner"]


class DockerRunner(ContainerRunner):
    """``docker`` block: runs the service's container through the Docker Engine API."""

    name: ClassVar[str] = "docker"
    engine: ClassVar[str] = "docker"
    display: ClassVar[str] = "Docker"
