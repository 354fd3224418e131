"""The docker runner: a service is a container run by the Docker engine (see
:mod:`runners._container` for what it does; this module only names the engine)."""

from __future__ import annotations

from typing import ClassVar

from ._container import ContainerHandle, ContainerRunner

__all__ = ["ContainerHandle", "DockerRunner"]


class DockerRunner(ContainerRunner):
    """``docker`` block: runs the service's container with the ``docker`` CLI."""

    name: ClassVar[str] = "docker"
    engine: ClassVar[str] = "docker"
    display: ClassVar[str] = "Docker"
    replace_flag: ClassVar[bool] = False  # no `run --replace`: a name conflict costs an `rm -f`
