"""The ``hive`` command line.

``hive status``, ``hive services`` and ``hive service status X`` (the commonest
commands, run by scripts and prompts) take a lean path of the standard library only
(:mod:`._lean`) when piped or with ``--json``; every other command, and these with other
options, loads click and ``hive_client`` (:mod:`.app`), each command's module only when
that command runs.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    from ._lean import lean_main

    lean_main(sys.argv[1:])  # exits when it answered
    from .app import main as full

    full()
