"""Where the daemon lives: ``HIVE_HOME`` and the socket inside it.

The CLI, the client library and the daemon all resolve paths here, so they agree.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SOCKET_NAME", "SYSTEM_HOME", "hive_home", "resolve_socket_path"]

SOCKET_NAME = "hive.sock"
SYSTEM_HOME = Path("/var/lib/hive")
# The system daemon's sockets: socket activation (hive.socket), then its home.
SYSTEM_SOCKETS = (Path("/run/hive") / SOCKET_NAME, SYSTEM_HOME / SOCKET_NAME)


def hive_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$HIVE_HOME``, else ``~/.hive``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HIVE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".hive"


def resolve_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The socket to talk to.

    Order: ``explicit`` (``--socket``), ``$HIVE_SOCKET``, ``$HIVE_HOME/hive.sock``, then
    ``~/.hive/hive.sock``; when that does not exist but a system daemon's socket does
    (``/run/hive/hive.sock``, ``/var/lib/hive/hive.sock``), that one, so ``hive status``
    works against the system unit.
    """
    if explicit:
        return Path(explicit).expanduser()
    env_socket = os.environ.get("HIVE_SOCKET")
    if env_socket:
        return Path(env_socket).expanduser()
    if os.environ.get("HIVE_HOME"):
        return hive_home() / SOCKET_NAME
    user_socket = Path.home() / ".hive" / SOCKET_NAME
    if not user_socket.exists():
        for system_socket in SYSTEM_SOCKETS:
            if system_socket.exists():
                return system_socket
    return user_socket
