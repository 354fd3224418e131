"""Hooks, of the project or of a service: steps that run a command, a runner, or a group."""

from __future__ import annotations

from typing import Any

import msgspec

from .._decode import describe
from .._issues import KeyPath
from .._model import Duration, HooksSpec, HookStep, OnHookFailure
from ._runner import Runners

__all__ = ["HOOK_EVENTS", "Hooks"]

HOOK_EVENTS = ("pre-up", "post-up", "pre-down", "post-down")


class _HookStepFields(msgspec.Struct, kw_only=True):
    working_dir: str | None = None
    on_failure: OnHookFailure | None = None
    timeout: Duration = 60.0
    retries: int = 3
    retry_delay: Duration = 5.0
    environment: dict[str, str] = {}


class Hooks(Runners):
    """``hooks:``; a runner step is a runner block (hence ``Runners``). State: decoder, sink,
    root."""

    def hooks(self, value: Any, path: KeyPath, default_dir: str) -> HooksSpec | None:
        if value is None:
            return HooksSpec()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        events: dict[str, list[HookStep]] = {}
        for event, steps in value.items():
            event_path = (*path, event)
            if event not in HOOK_EVENTS:
                self.decoder.warn_unknown_key(event_path, HOOK_EVENTS)
                continue
            if steps is None:
                continue
            if not isinstance(steps, list):
                self.sink.error(event_path, f"expected a list of steps, got {describe(steps)}")
                continue
            on_failure: OnHookFailure = "abort" if event in ("pre-up", "post-up") else "warn"
            built = [
                self.hook_step(step, (*event_path, index), on_failure, default_dir)
                for index, step in enumerate(steps)
            ]
            events[event.replace("-", "_")] = [step for step in built if step is not None]
        if self._error_count() > start:
            return None
        return HooksSpec(**events)

    def hook_step(
        self, value: Any, path: KeyPath, inherited_on_failure: OnHookFailure, default_dir: str
    ) -> HookStep | None:
        if not self._expect_mapping(value, path, "a step mapping (run, runner or parallel)"):
            return None
        type_name = value.get("type")
        flat_script = type_name == "script" and "run" in value
        kinds = [key for key in ("run", "runner", "parallel", "type") if key in value]
        count = len(kinds) - (1 if flat_script else 0)
        if count == 0:
            self.sink.error(
                path, "Hook step must have exactly one of: run, runner, parallel, or type"
            )
            return None
        if count > 1:
            self.sink.error(
                path,
                "Hook step must have exactly one of: run, runner, parallel, or type "
                f"(found {count})",
            )
            return None
        extra_keys = ["run", "runner", "parallel", "type"]
        if isinstance(type_name, str):
            extra_keys.append(type_name)
        common_keys = {key: item for key, item in value.items() if key not in extra_keys}
        fields = self.decoder.decode(common_keys, _HookStepFields, path, extra_keys=extra_keys)
        if fields is None:
            return None
        on_failure = fields.on_failure or inherited_on_failure
        working_dir = (
            self._resolve(self.root, fields.working_dir, (*path, "working_dir"))
            if fields.working_dir
            else default_dir
        )
        common: dict[str, Any] = {
            "working_dir": working_dir,
            "on_failure": on_failure,
            "timeout": fields.timeout,
            "retries": fields.retries,
            "retry_delay": fields.retry_delay,
            "environment": fields.environment,
        }
        if "run" in value:
            run = self.decoder.decode(value["run"], str, (*path, "run"))
            if run is None:
                return None
            if not run.strip():
                self.sink.error((*path, "run"), "'run' is required")
                return None
            return HookStep(kind="run", run=run, **common)
        if "parallel" in value:
            return self._parallel_step(value["parallel"], path, on_failure, working_dir, common)
        if "runner" in value:
            runner = self.runner(value["runner"], (*path, "runner"), None)
            return None if runner is None else HookStep(kind="runner", runner=runner, **common)
        # Flat form `{type: docker, docker: {...}}`.
        if not isinstance(type_name, str) or not type_name:
            self.sink.error((*path, "type"), "'type' must be a runner type")
            return None
        if type_name == "script":
            self.sink.error(path, "Hook step with type 'script' must have a 'run' field")
            return None
        if value.get(type_name) is None:
            self.sink.error(
                path, f"Hook step with type '{type_name}' must have a '{type_name}' config section"
            )
            return None
        runner = self.runner({"type": type_name, type_name: value[type_name]}, path, None)
        return None if runner is None else HookStep(kind="runner", runner=runner, **common)

    def _parallel_step(
        self,
        value: Any,
        path: KeyPath,
        on_failure: OnHookFailure,
        working_dir: str,
        common: dict[str, Any],
    ) -> HookStep | None:
        if on_failure == "retry":
            self.sink.error(
                (*path, "on_failure"), "on_failure: retry is not available for parallel groups"
            )
            return None
        if not isinstance(value, list):
            self.sink.error((*path, "parallel"), f"expected a list of steps, got {describe(value)}")
            return None
        # Children inherit the group's on_failure (spec S).
        children = [
            self.hook_step(step, (*path, "parallel", index), on_failure, working_dir)
            for index, step in enumerate(value)
        ]
        if None in children:
            return None
        return HookStep(kind="parallel", parallel=[c for c in children if c is not None], **common)
