"""A ``run`` that starts with ``#!``: a script of the interpreter it names, not a shell command.

The text is written to a file of its own (mode 0700) beside the instance's capture files,
in the daemon's run directory, and that file is executed: the kernel reads the ``#!`` line as
it does for any script on disk, so the interpreter gets the file's path as its argument and
the process is the interpreter itself (its pid is the service's pid, in the service's own
session and process group, like any other start).

The file is replaced, never rewritten: a new file is renamed over the old one, so an
interpreter still reading the previous start's script (a shell reads its script as it goes)
keeps its own copy.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile

from ._command import _is_executable_file
from .base import RunnerError

__all__ = ["check_interpreter", "is_script", "write_script"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.#-]")
# Where scripts go when a spec names no capture file (a runner used on its own): one private
# directory per process, made on first use.
_fallback_dir: str | None = None


def is_script(command: str) -> bool:
    """True when ``command`` is a script with its own interpreter (``#!`` first)."""
    return command.startswith("#!")


def _script_dir(stdout_path: str, stderr_path: str) -> str:
    global _fallback_dir
    capture = stdout_path or stderr_path
    if capture:
        return os.path.dirname(os.path.abspath(capture))
    if _fallback_dir is None or not os.path.isdir(_fallback_dir):
        _fallback_dir = tempfile.mkdtemp(prefix="hive-scripts-")
    return _fallback_dir


def _unchanged(path: str, text: str) -> bool:
    """Whether ``path`` is already our script holding ``text`` (a regular file of ours,
    0700, not writable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
            return False
        data = text.encode("utf-8")
        if info.st_size != len(data):
            return False
        return os.read(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def check_interpreter(command: str, cwd: str) -> None:
    """Say now, in words, when the ``#!`` program is missing: the kernel would only say
    ENOENT about the script file."""
    line = command[2:].split("\n", 1)[0].strip()
    if not line:
        raise RunnerError("the #! line of 'run' names no interpreter")
    program = line.split(None, 1)[0]
    path = os.path.normpath(os.path.join(cwd, program))
    found = _is_executable_file(path)
    if found is None:
        raise RunnerError(f"the #! interpreter {program} of 'run' was not found (no such file: {path})")
    if not found:
        raise RunnerError(f"the #! interpreter {program} of 'run' is not executable: {path}")


def write_script(command: str, *, fqn: str, cwd: str, stdout_path: str, stderr_path: str) -> str:
    """Write ``command`` to its script file (0700) and return the file's absolute path."""
    check_interpreter(command, cwd)
    directory = _script_dir(stdout_path, stderr_path)
    name = _UNSAFE.sub("_", fqn) + ".script"
    text = command if command.endswith("\n") else command + "\n"
    path = os.path.join(directory, name)
    if _unchanged(path, text):
        return path  # a restart writes nothing: it must work on a full disk too
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(temporary, 0o700)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise RunnerError(f"cannot write the script of 'run' in {directory}: {exc.strerror or exc}") from None
    return path
