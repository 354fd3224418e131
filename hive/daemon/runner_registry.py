"""Runners by name, found through the ``hive.runners`` entry-point group.

The built-in runners are registered there too (see pyproject.toml), so a third-party
runner plugs in exactly the way ours do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hive.config import add_runner, remove_runner
from runners.base import Runner, RunnerError

from ..entry_points import entry_points

__all__ = ["RunnerRegistry", "UnknownRunner"]

log = logging.getLogger("hive.runners")
GROUP = "hive.runners"


class UnknownRunner(Exception):
    pass


class RunnerRegistry:
    def __init__(self, settings: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._available = {ep.name: ep for ep in entry_points(group=GROUP)}
        self._loaded: dict[str, Runner] = {}
        self._settings: Mapping[str, Mapping[str, Any]] = settings or {}

    def check_configured(self) -> list[str]:
        """Load every runner that has settings, so a wrong ``[runners.NAME]`` stops the
        daemon's start rather than a service's; the problems."""
        problems = []
        for name in self._settings:
            try:
                self.get(name)
            except UnknownRunner as exc:
                problems.append(str(exc))
        return problems

    def reconfigure(self, settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """New ``[runners.*]`` settings (a reload); the problems of runners that refuse them
        (they keep their previous settings)."""
        self._settings = settings
        problems = []
        for name, runner in self._loaded.items():
            try:
                runner.configure(settings.get(name, {}))
            except RunnerError as exc:
                problems.append(f"[runners.{name}] in config.toml: {exc}")
        return problems

    @property
    def names(self) -> list[str]:
        return sorted(self._available)

    def add(self, runner: Runner) -> None:
        """Use ``runner`` for its name: a runner built in-process (an embedding, the
        supervisor's in-process tests) rather than found through its entry point. Its type
        is then a known runner type to ``hive.yaml`` validation too."""
        self._loaded[runner.name] = runner
        add_runner(runner.name, type(runner))  # hive.yaml may name it: validation knows it

    def remove(self, name: str) -> None:
        """Undo :meth:`add` (validation no longer knows the name either)."""
        if self._loaded.pop(name, None) is not None:
            remove_runner(name)

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
        try:
            runner.configure(self._settings.get(name, {}))
        except RunnerError as exc:
            raise UnknownRunner(f"[runners.{name}] in config.toml: {exc}") from None
        self._loaded[name] = runner
        return runner
