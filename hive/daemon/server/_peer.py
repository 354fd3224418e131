"""Who is on the other end: the listening socket, a peer's credentials, its groups."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from pathlib import Path

import msgspec

__all__ = ["Peer", "bind_unix_socket", "groups_of", "peer_of"]

_PEERCRED = struct.Struct("3i")


class Peer(msgspec.Struct, frozen=True):
    pid: int
    uid: int
    gid: int


def bind_unix_socket(path: Path, group: str = "") -> socket.socket:
    """Bind and listen on ``path``, created 0600 (0660 for an allowed group)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    mode = 0o660 if group else 0o600
    # Set the mode through the umask so the socket is never briefly open to others.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(1024)
    return sock


def peer_of(sock: socket.socket) -> Peer:
    """The process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return Peer(pid=pid, uid=uid, gid=gid)


def groups_of(uid: int) -> set[int]:
    """The groups of a uid from the user database (``getgrouplist``), not from
    /proc/PID/status: the shipped unit's ``ProtectProc=invisible`` hides other users'
    processes, and a group added with ``usermod -aG`` counts from the next connection."""
    try:
        user = pwd.getpwuid(uid)
        return set(os.getgrouplist(user.pw_name, user.pw_gid))
    except (KeyError, OSError):
        return set()
