"""The podman runner: a service is a container run by podman (see
:mod:`runners._container` for what it does; this module only names the engine)."""

from __future__ import annotations

import re
from typing import ClassVar

from ._container import ContainerHandle, ContainerRunner

__all__ = ["ContainerHandle", "PodmanRunner"]


class PodmanRunner(ContainerRunner):
    """``podman`` block: runs the service's container with the ``podman`` CLI."""

    name: ClassVar[str] = "podman"
    engine: ClassVar[str] = "podman"
    display: ClassVar[str] = "Podman"
    replace_flag: ClassVar[bool] = True  # `run --replace` removes a stale container itself
    socket_flag: ClassVar[str] = "--url"  # a remote or rootful podman service
    unreachable_text: ClassVar[re.Pattern[str]] = re.compile(
        r"[Cc]annot connect to Podman|unable to connect to Podman"
    )
