"""Memory capture files: a service's stdout and stderr held in memory, not on a disk.

Each stream of a script service is a memfd (an anonymous tmpfs file of the kernel's own
mount, which has no size limit): the child appends to it with O_APPEND, the daemon reads
it and punches out what it consumed, as it does with a capture file on disk. Nothing the
child writes depends on Hive's disk, so a full ``HIVE_HOME`` can never make its
``write()`` fail (no ENOSPC), and there is no pipe whose reader could vanish (no EPIPE,
no blocking while the daemon is away).

Across a daemon restart nothing has to be handed over: the service itself holds the
file open. The next daemon reopens it through ``/proc/PID/fd/1`` (and ``/2``), checks it
is the memfd this runner named for the service, and follows it from the saved offset.
"""

from __future__ import annotations

import contextlib
import logging
import os

__all__ = ["MemoryCapture", "memfd_name", "reopen_capture"]

_PREFIX = "hive:"
# memfd names are cut at 249 bytes by the kernel; ours stay under it.
_MAX_NAME = 240


def memfd_name(fqn: str, stream: str) -> str:
    """The name of the memfd holding ``stream`` of the instance ``fqn``."""
    name = f"{_PREFIX}{fqn}.{stream}"
    data = name.encode("utf-8", "surrogateescape")
    return data[:_MAX_NAME].decode("utf-8", "ignore") if len(data) > _MAX_NAME else name


class MemoryCapture:
    """One stream's memfd: ``reader`` stays with the daemon (read-write, to punch holes),
    ``writer`` (O_APPEND) is what the child gets as its stdout or stderr."""

    __slots__ = ("reader", "writer")

    def __init__(self, fqn: str, stream: str) -> None:
        self.reader = os.memfd_create(memfd_name(fqn, stream), os.MFD_CLOEXEC)
        try:
            self.writer = os.open(f"/proc/self/fd/{self.reader}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except BaseException:
            os.close(self.reader)
            raise

    @classmethod
    def of_file(cls, writer: int) -> MemoryCapture:
        """A capture file on disk the child appends to (no reader: the daemon follows
        the file by its path)."""
        capture = cls.__new__(cls)
        capture.reader, capture.writer = -1, writer
        return capture

    def close_writer(self) -> None:
        if self.writer >= 0:
            fd, self.writer = self.writer, -1
            os.close(fd)

    def close(self) -> None:
        self.close_writer()
        if self.reader >= 0:
            fd, self.reader = self.reader, -1
            os.close(fd)


log = logging.getLogger("hive.runners")


def reopen_capture(pid: int, target: int, fqn: str, stream: str, pgid: int | None = None) -> int:
    """A new read-write descriptor on the memfd this runner made for ``stream`` of ``fqn``:
    descriptor ``target`` of process ``pid``, else any descriptor of a process of group
    ``pgid`` that still holds it (the main process redirected its own output, its children
    did not); -1, and a warning, when none does: its output is no longer captured."""
    fd = _reopen(f"/proc/{pid}/fd/{target}", fqn, stream)
    if fd < 0 and pgid is not None:
        for link in _group_descriptors(pgid):
            if (fd := _reopen(link, fqn, stream)) >= 0:
                break
    if fd < 0:
        log.warning("%s: its %s capture (a memfd) is held by no process of its group any more; "
                    "what it writes there is no longer read", fqn, stream)
    return fd


def _group_descriptors(pgid: int) -> list[str]:
    """The /proc descriptor links of the processes of group ``pgid``."""
    links: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry)) == pgid:
                links += [f"/proc/{entry}/fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
    return links


def _reopen(link: str, fqn: str, stream: str) -> int:
    try:
        where = os.readlink(link)
    except OSError:
        return -1
    if where not in (f"/memfd:{memfd_name(fqn, stream)} (deleted)", f"/memfd:{memfd_name(fqn, stream)}"):
        return -1
    try:
        fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return -1
    # The descriptor may have been replaced between readlink and open: check it again.
    try:
        same = os.readlink(f"/proc/self/fd/{fd}") == where
    except OSError:
        same = False
    if not same:
        with contextlib.suppress(OSError):
            os.close(fd)
        return -1
    return fd
