"""Each runner's block is checked against the runner's own ``Config``.

A runner owns the keys of its ``runner: {type: X, X: {...}}`` block (``runners.base``):
the config layer keeps no copy of them. It finds the runner class registered as ``X`` in
the ``hive.runners`` entry-point group, the one the daemon's runner registry reads, and
decodes the block with that class's ``Config`` Struct, so ``hive config validate`` and
the runner agree by construction. A runner that is not installed, fails to import, or
declares no ``Config`` has its block passed on unchecked: the daemon reports what is
wrong with it when the service starts.
"""

from __future__ import annotations

import msgspec

from runners.base import Runner

from ..entry_points import EntryPoint, entry_points

__all__ = ["GROUP", "add_in_process_runner", "forget_in_process_runner", "installed_runners", "runner_schema"]

GROUP = "hive.runners"

# Filled on first use: a project of docker services imports the docker runner once.
_registered: dict[str, EntryPoint] | None = None
_schemas: dict[str, type[msgspec.Struct] | None] = {}
# Runners a daemon was given in-process (an embedding, the in-process tests): installed too.
_in_process: dict[str, type[msgspec.Struct] | None] = {}


def _points(*, refresh: bool = False) -> dict[str, EntryPoint]:
    global _registered
    if _registered is None or refresh:
        _registered = {point.name: point for point in entry_points(GROUP)}
        _schemas.clear()
        _schemas.update(_in_process)
    return _registered


def add_in_process_runner(runner: Runner) -> None:
    """A runner the daemon was handed rather than found through its entry point: its type is
    known to validation, and its block is checked against its ``Config``."""
    config = getattr(runner, "Config", None)
    schema = config if isinstance(config, type) and issubclass(config, msgspec.Struct) else None
    _in_process[runner.name] = schema
    _schemas[runner.name] = schema


def forget_in_process_runner(name: str) -> None:
    """Undo :func:`add_in_process_runner` (the embedding is gone)."""
    _in_process.pop(name, None)
    _schemas.pop(name, None)


def installed_runners(wanted: str = "") -> list[str]:
    """The runner types installed (built-in and plugins), sorted. If ``wanted`` is not
    among them, look again: a plugin may have been installed since the first look."""
    if wanted and wanted not in _points() and wanted not in _in_process:
        _points(refresh=True)
    return sorted({*_points(), *_in_process})


def runner_schema(type_name: str) -> type[msgspec.Struct] | None:
    """The ``Config`` of the runner registered as ``type_name``, or None (see above)."""
    if type_name in _schemas:
        return _schemas[type_name]
    schema: type[msgspec.Struct] | None = None
    point = _points().get(type_name)
    if point is not None:
        try:
            runner = point.load()
        except Exception:  # a broken plugin is the daemon's to report, with its traceback
            runner = None
        config = getattr(runner, "Config", None) if isinstance(runner, type) and issubclass(runner, Runner) else None
        if isinstance(config, type) and issubclass(config, msgspec.Struct):
            schema = config
    _schemas[type_name] = schema
    return schema
