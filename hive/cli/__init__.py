"""The ``hive`` command line.

``hive status`` (the commonest command, run by scripts and prompts) takes a lean path
of the standard library only (:mod:`._lean`); every other command, and ``status`` with
options, loads click and ``hive_client`` (:mod:`.app`), each command's module only when
that command runs.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    from ._lean import lean_status

    lean_status(sys.argv[1:])  # exits when it answered
    from .app import main as full

    full()
