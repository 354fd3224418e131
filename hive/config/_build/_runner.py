"""A runner block, decoded with the ``Config`` of the runner registered under its type (see
``hive.config._runners``), never with a shape kept here."""

from __future__ import annotations

from typing import Any

import msgspec

from runners.base import RunnerConfig

from .._issues import KeyPath
from .._model import RunnerSpec, ScriptRunnerConfig
from .._runners import runner_schema
from .._shell import missing_shell
from ._blocks import TypedBlocks
from ._common import TemplateScope

__all__ = ["Runners"]

# Built-in types whose `{type: X, X: {...}}` block is required (an error when missing).
_RUNNERS_WITH_REQUIRED_BLOCK = frozenset({"script", "docker", "podman", "compose"})


class Runners(TypedBlocks):
    """``runner:`` of a service or a hook step. State: decoder, sink, root,
    _default_shell_reported."""

    def runner(self, value: Any, path: KeyPath, scope: TemplateScope | None) -> RunnerSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="runner",
            label="runner",
            required_blocks=_RUNNERS_WITH_REQUIRED_BLOCK,
            type_required="Runner type is required",
            missing_block="Missing '{t}' configuration for {t} runner",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        start = self._error_count()
        # The model types the script block for the daemon (RunnerSpec.script).
        schema = ScriptRunnerConfig if type_name == "script" else runner_schema(type_name)
        config: dict[str, Any] = block
        script = None
        if schema is not None:
            decoded = self.decoder.decode_with_data(block, schema, block_path)
            if decoded is not None:
                typed, config = decoded
                self._runner_problems(typed, block_path)
                if isinstance(typed, ScriptRunnerConfig):
                    script = msgspec.structs.replace(
                        typed,
                        working_dir=self._resolve(
                            self.root, typed.working_dir, (*block_path, "working_dir")
                        ),
                        shell=self._script_shell(typed.shell, value[type_name], block_path),
                    )
        self._check_templates(block, block_path, scope)
        if self._error_count() > start:
            return None
        return RunnerSpec(type=type_name, config=config, script=script)

    def _script_shell(self, shell: str | None, own: dict[str, Any], path: KeyPath) -> str | None:
        """The shell a script block runs with (see :mod:`._shell`): a missing one is an error
        when the block names it, a warning (once) and dropped when it comes from defaults."""
        if shell is None:
            return None
        problem = missing_shell(shell, self.root)
        if problem is None:
            return shell
        if "shell" in own:
            self.sink.error((*path, "shell"), f"{problem}: install it, or leave 'shell' out "
                            "(commands then run directly, or under $SHELL or /bin/sh)")
            return shell
        if not self._default_shell_reported:
            self._default_shell_reported = True
            self.sink.warning(("defaults", "hive.runner.script", "shell"), f"{problem}: script "
                              "services run their commands without it (directly, or under $SHELL "
                              "or /bin/sh), as Hive's original does; install it to use it")
        return None

    def _runner_problems(self, config: msgspec.Struct, path: KeyPath) -> None:
        """What a runner's Config says is wrong beyond its types (``RunnerConfig.check``)."""
        if not isinstance(config, RunnerConfig):
            return
        for problem in config.check():
            report = self.sink.warning if problem.warning else self.sink.error
            report((*path, *problem.path), problem.message)
