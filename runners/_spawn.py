"""Spawning through the C library's ``posix_spawn``, working directory included.

``subprocess.Popen`` costs about as much as ``posix_spawn`` on a quiet machine, but it
reads an error pipe after the fork, and on a busy one the parent waits there until the
child is scheduled again to close it. glibc's ``posix_spawn`` reports exec errors
through the memory it shares with the child instead, and ``addchdir_np`` gives it the
working directory Python's ``os.posix_spawn`` cannot set. Where the C library lacks
these, :data:`AVAILABLE` is False and the caller uses Popen.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal

__all__ = ["AVAILABLE", "spawn"]

_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80

# Opaque C structures, larger than glibc's (80 and 336 bytes on x86-64 and arm64).
_FileActions = ctypes.c_byte * 512
_Attributes = ctypes.c_byte * 1024
_SigSet = ctypes.c_byte * 128


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    needed = (
        "posix_spawn",
        "posix_spawn_file_actions_init",
        "posix_spawn_file_actions_destroy",
        "posix_spawn_file_actions_adddup2",
        "posix_spawn_file_actions_addchdir_np",
        "posix_spawnattr_init",
        "posix_spawnattr_destroy",
        "posix_spawnattr_setflags",
        "posix_spawnattr_setsigmask",
        "posix_spawnattr_setsigdefault",
        "sigemptyset",
        "sigaddset",
    )
    if not all(hasattr(libc, name) for name in needed):
        return None
    return libc


_libc = _load()
AVAILABLE = _libc is not None
# closefrom in the child (glibc 2.34+): nothing but 0, 1, 2 reaches the service even if
# some library opened a descriptor without O_CLOEXEC.
_CLOSEFROM = _libc is not None and hasattr(_libc, "posix_spawn_file_actions_addclosefrom_np")


@functools.cache
def _ignored_signals() -> list[int]:
    """Signals the daemon ignores (Python ignores SIGPIPE and SIGXFSZ, a parent may have
    ignored more): an ignored signal stays ignored across exec, unlike a handled one,
    so these are the ones to reset. Resetting all 64 would cost the child a syscall
    each, while the parent waits for its exec. Read once: the daemon ignores no
    signal later."""
    ignored = []
    for number in range(1, signal.NSIG):
        try:
            if signal.getsignal(number) is signal.SIG_IGN:
                ignored.append(number)
        except (ValueError, OSError):
            continue
    return ignored


def _strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated ``char *[]``."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def spawn(
    executable: str,
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
) -> int:
    """Start ``executable`` in a new session, with default signal dispositions and an
    empty signal mask; the pid. OSError (with the errno of the failed exec or chdir)."""
    assert _libc is not None
    libc = _libc
    # surrogateescape: what os.fsencode does, without a call per string.
    c_argv = _strings([arg.encode("utf-8", "surrogateescape") for arg in argv])
    c_env = _strings([f"{key}={value}".encode("utf-8", "surrogateescape") for key, value in env.items()])
    actions = _FileActions()
    attributes = _Attributes()
    signals = _SigSet()
    pid = ctypes.c_int(0)

    def check(result: int) -> None:
        if result:
            raise OSError(result, os.strerror(result), executable)

    check(libc.posix_spawn_file_actions_init(actions))
    try:
        check(libc.posix_spawnattr_init(attributes))
        try:
            for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
                check(libc.posix_spawn_file_actions_adddup2(actions, fd, target))
            if _CLOSEFROM:
                check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3))
            check(libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)))
            libc.sigemptyset(signals)
            check(libc.posix_spawnattr_setsigmask(attributes, signals))
            for number in _ignored_signals():
                libc.sigaddset(signals, number)
            check(libc.posix_spawnattr_setsigdefault(attributes, signals))
            check(libc.posix_spawnattr_setflags(
                attributes,
                ctypes.c_short(_POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF),
            ))
            error = libc.posix_spawn(
                ctypes.byref(pid), os.fsencode(executable), actions, attributes, c_argv, c_env
            )
            if error:
                raise OSError(error, os.strerror(error), executable)
        finally:
            libc.posix_spawnattr_destroy(attributes)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
    return pid.value

