"""The ``shell`` of a script block: is it installed here?

Hive's original never applies ``defaults`` to a service, so a ``shell`` set there
(``defaults: {hive.runner.script: {shell: zsh}}``, as Hive's own project file has it) never
made a service fail where that shell is missing: it ran under ``$SHELL``, else ``sh``. This
Hive applies ``defaults`` (the format's rule) and keeps that outcome: a shell from
``defaults`` that is not installed is a warning and is dropped, so commands run as with no
shell set (directly, or under ``$SHELL`` when it is a POSIX shell, else ``/bin/sh``). A shell
a service names in its own block is what it asked for: missing, it is an error.
"""

from __future__ import annotations

import os
import shlex

from runners._command import resolve_program
from runners.base import RunnerError

__all__ = ["missing_shell"]


def missing_shell(shell: str, root: str) -> str | None:
    """Why ``shell`` cannot run here (looked up on Hive's PATH, relative paths against
    ``root``), or None when it can."""
    try:
        words = shlex.split(shell)
    except ValueError:
        words = []
    if not words:
        return f"invalid shell {shell!r}: expected a program name or path, e.g. bash"
    try:
        resolve_program(words[0], dict(os.environ), root, what="shell")
    except RunnerError as exc:
        return str(exc)
    return None
