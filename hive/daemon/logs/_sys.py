"""The Linux calls the stdlib lacks: inotify and fallocate(PUNCH_HOLE), through ctypes."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

__all__ = [
    "IN_IGNORED",
    "IN_MODIFY",
    "IN_Q_OVERFLOW",
    "Inotify",
    "punch_hole",
]

IN_MODIFY = 0x00000002
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)

_inotify_init1 = _libc.inotify_init1
_inotify_init1.argtypes = [ctypes.c_int]
_inotify_init1.restype = ctypes.c_int

_inotify_add_watch = _libc.inotify_add_watch
_inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_inotify_add_watch.restype = ctypes.c_int

_inotify_rm_watch = _libc.inotify_rm_watch
_inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_inotify_rm_watch.restype = ctypes.c_int

# fallocate64 takes a 64-bit off_t everywhere; plain fallocate only on 64-bit ABIs.
_fallocate = getattr(_libc, "fallocate64", None) or _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def _raise_errno(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


class Inotify:
    """One non-blocking inotify descriptor; ``events()`` drains what is queued."""

    def __init__(self) -> None:
        fd = _inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self.fd: int = fd

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        wd = _inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            _raise_errno(f"inotify_add_watch({os.fspath(path)})")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        # EINVAL means the kernel already dropped it (file deleted): nothing to undo.
        if _inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _raise_errno("inotify_rm_watch")

    def events(self) -> Iterator[tuple[int, int, bytes]]:
        """(wd, mask, name) of every queued event; returns when the queue is empty.

        ``name`` is the file's name for a watch on a directory, else empty."""
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, name_len = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                offset = start + name_len
                yield wd, mask, data[start:offset].rstrip(b"\0")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes from ``offset``, keeping the file's size and offsets.

    False when the filesystem cannot do it (the caller stops trying); other
    failures raise OSError.
    """
    if length <= 0:
        return True
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"fallocate(PUNCH_HOLE): {os.strerror(code)}")
