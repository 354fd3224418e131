"""How a service starts, restarts and stops: depends_on, build, watch, restart, stop_signal."""

from __future__ import annotations

import signal
from typing import Any, TypeGuard

import msgspec

from .._decode import describe, did_you_mean
from .._issues import KeyPath
from .._model import BuildSpec, RestartPolicy, RestartSpec, WatchSpec
from ._common import BuilderBase

__all__ = ["RESTART_POLICIES", "Lifecycle"]

RESTART_POLICIES: tuple[RestartPolicy, ...] = ("never", "on-failure", "always", "unless-stopped")


def _is_policy(value: str) -> TypeGuard[RestartPolicy]:
    return value in RESTART_POLICIES


class Lifecycle(BuilderBase):
    """Those keys of a service. State: decoder, sink, root."""

    def depends_on(self, value: Any, path: KeyPath) -> list[str] | None:
        names = self.decoder.decode(value, list[str], path)
        if names is None:
            return None
        seen: set[str] = set()
        unique: list[str] = []
        for index, name in enumerate(names):
            if name in seen:
                self.sink.warning((*path, index), f"'{name}' is listed twice")
                continue
            seen.add(name)
            unique.append(name)
        return unique

    def build(self, value: Any, path: KeyPath, service_dir: str) -> BuildSpec | None:
        spec = self.decoder.decode(value, BuildSpec, path)
        if spec is None:
            return None
        if not spec.command.strip():
            self.sink.error((*path, "command"), "'command' is required")
            return None
        # Spec S: the build runs in its own working_dir, else the runner's, else the root.
        build_dir = (
            self._resolve(self.root, spec.working_dir, (*path, "working_dir"))
            if "working_dir" in value
            else service_dir
        )
        output = self._resolve(build_dir, spec.output, (*path, "output")) if spec.output else None
        return msgspec.structs.replace(spec, working_dir=build_dir, output=output)

    def watch(self, value: Any, path: KeyPath, *, has_build: bool) -> WatchSpec | None:
        """Paths resolved against the root; `rebuild` needs the build it runs."""
        if isinstance(value, (str, list)):  # `watch: src` or `watch: [src, lib]`: paths alone
            value = {"paths": [value] if isinstance(value, str) else value}
        spec = self.decoder.decode(value, WatchSpec, path)
        if spec is None:
            return None
        if not spec.paths:
            self.sink.error((*path, "paths"), "no paths: leave 'paths' out to watch the project root")
            return None
        if spec.action == "rebuild" and not has_build:
            self.sink.error((*path, "action"),
                            "action 'rebuild' runs the service's build, and it has none: add a 'build' "
                            "(command: ...) or use action 'restart'")
            return None
        paths = [self._resolve(self.root, entry, (*path, "paths")) for entry in spec.paths]
        return msgspec.structs.replace(spec, paths=paths)

    def restart(self, value: Any, path: KeyPath) -> RestartSpec | None:
        if isinstance(value, str):
            if not _is_policy(value):
                self.sink.error(
                    path,
                    f"invalid restart policy {value!r}: expected one of "
                    f"{', '.join(RESTART_POLICIES)}{did_you_mean(value, RESTART_POLICIES)}",
                )
                return None
            return RestartSpec(policy=value)
        if isinstance(value, dict):
            if "policy" not in value:
                self.sink.error((*path, "policy"), "'policy' is required")
                return None
            spec = self.decoder.decode(value, RestartSpec, path)
            if spec is None:
                return None
            if (
                spec.delay is not None
                and spec.max_delay is not None
                and spec.delay > spec.max_delay
            ):
                self.sink.error((*path, "delay"), "delay must not be larger than max_delay")
                return None
            return spec
        self.sink.error(
            path,
            f"expected a policy ({', '.join(RESTART_POLICIES)}) or a mapping "
            f"{{policy, delay, max_delay, reset_after, jitter}}, got {describe(value)}",
        )
        return None

    def stop_signal(self, value: Any, path: KeyPath) -> str | None:
        """Normalises TERM, SIGTERM or 15 to "SIGTERM"."""
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.sink.error(path, f"expected a signal name or number, got {describe(value)}")
            return None
        if isinstance(value, int):
            try:
                return signal.Signals(value).name
            except ValueError:
                self.sink.error(path, f"unknown signal number {value}")
                return None
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name in signal.Signals.__members__ and not name.startswith("SIG_"):
            return signal.Signals[name].name
        self.sink.error(path, f"unknown signal {value!r} (e.g. SIGTERM, TERM, SIGINT, 15)")
        return None
