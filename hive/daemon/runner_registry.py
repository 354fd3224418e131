"""Runners by name, found through the ``hive.runners`` entry-point group.

The built-in runners are registered there too (see pyproject.toml), so a third-party
runner plugs in exactly the way ours do.
"""

from __future__ import annotations

import logging

from runners.base import Runner

from ..entry_points import entry_points

__all__ = ["RunnerRegistry", "UnknownRunner"]

log = logging.getLogger("hive.runners")
GROUP = "hive.runners"


class UnknownRunner(Exception):
    pass


class RunnerRegistry:
    def __init__(self) -> None:
        self._available = {ep.name: ep for ep in entry_points(group=GROUP)}
        self._loaded: dict[str, Runner] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._available)

    def get(self, name: str) -> Runner:
        runner = self._loaded.get(name)
        if runner is not None:
            return runner
        entry = self._available.get(name)
        if entry is None:
            known = ", ".join(self.names) or "none"
            raise UnknownRunner(
                f"no runner plugin available for {name!r} (installed runners: {known}); "
                f"install a package that registers it in the {GROUP!r} entry-point group"
            )
        try:
            runner_class = entry.load()
            runner = runner_class()
        except Exception as exc:
            log.exception("runner %s failed to load", name)
            raise UnknownRunner(f"runner {name!r} failed to load: {exc}") from exc
        if not isinstance(runner, Runner):
            raise UnknownRunner(f"runner {name!r} ({entry.value}) is not a runners.base.Runner")
        self._loaded[name] = runner
        return runner
