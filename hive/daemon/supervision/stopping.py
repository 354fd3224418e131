"""How instances are stopped: together, by runner, with their pre-down hooks first.

A stop is told to every live instance at once (its phase moves to stopping, a backoff
or a dependency wait is cut short, pre-up hooks or a build under way are cancelled);
their runners then stop all of theirs in one sweep (``stop_many``), shared with the
stops of other services asked in the same moment (see :mod:`.sweeps`). An instance its
runner cannot stop now (its engine is away) is left stopping, with why: the runner
carries the stop out when it can. The instance's own task sees the exit and ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from hive_client import LogLevel
from runners.base import RunnerError, ServiceHandle, StopFailed

from ..runner_registry import RunnerRegistry, UnknownRunner
from .launch import Launcher
from .machine import Input
from .phases import Phases
from .runtime import InstanceRuntime
from .sweeps import StopSweeps, SweepKey

__all__ = ["Left", "Stopper"]

log = logging.getLogger("hive.supervisor")

# Instances a stop could not carry out now, each with why.
Left = list[tuple[InstanceRuntime, str]]


class Stopper:
    def __init__(self, runners: RunnerRegistry, phases: Phases, launcher: Launcher) -> None:
        self._runners = runners
        self._phases = phases
        self._launcher = launcher
        self._sweeps = StopSweeps(self._stop_handles)

    async def stop(self, instances: Sequence[InstanceRuntime]) -> Left:
        """Stop instances together: their runners stop all of theirs in one sweep. Every
        live one is told; those whose runner cannot stop them now (their engine is away)
        are left stopping, and returned with why; the others are waited for (a runner
        kills after the grace period, so the wait is bounded)."""
        stopping: list[InstanceRuntime] = []
        for instance in instances:
            if not instance.live:
                continue
            self._phases.apply(instance, Input.STOP)
            stopping.append(instance)
            instance.wakeup.set()  # out of a backoff or a wait for its dependencies
            if instance.preparing is not None:
                instance.preparing.cancel()  # its pre-up hooks or build
        # pre-down hooks, before the signal; a failing one never blocks the stop.
        with_hooks = [i for i in stopping if i.handle is not None and i.service.config.hooks.pre_down]
        if with_hooks:
            async with anyio.create_task_group() as hooks:
                for instance in with_hooks:
                    hooks.start_soon(self.down_hooks, instance, "pre-down")
        groups: dict[SweepKey, list[ServiceHandle]] = {}
        for instance in stopping:
            handle = instance.handle
            if handle is not None:
                config = instance.service.config
                key = (config.runner.type, config.stop_signum(), config.stop_grace)
                groups.setdefault(key, []).append(handle)
        failed: dict[int, str] = {}  # id(handle) -> why its stop failed
        if len(groups) == 1:  # the usual case: no task group (bench/peers.py "stop of 100")
            [(key, handles)] = groups.items()
            await self._sweep(key, handles, failed)
        elif groups:
            async with anyio.create_task_group() as stops:
                for key, handles in groups.items():
                    stops.start_soon(self._sweep, key, handles, failed)
        left: Left = []
        for instance in stopping:
            why = failed.get(id(instance.handle)) if instance.handle is not None else None
            if why is not None:
                self._phases.note(instance, f"not stopped yet: {why}", LogLevel.WARN)
                instance.last_error = why
                instance.service.notify(instance)
                left.append((instance, why))
                continue
            await instance.wait_finished()
        return left

    async def down_hooks(self, instance: InstanceRuntime, event: str) -> None:
        """The service's pre-down or post-down hooks; a failure is noted, the stop goes on."""
        hooks = instance.service.config.hooks
        steps = hooks.pre_down if event == "pre-down" else hooks.post_down
        outcome = await self._launcher.run_hooks(instance, event, steps)
        if not outcome.ok:
            self._phases.note(instance, f"{outcome.message} (the stop goes on)", LogLevel.WARN)

    async def _sweep(self, key: SweepKey, handles: list[ServiceHandle], failed: dict[int, str]) -> None:
        failed.update(await self._sweeps.stop(key, handles))

    async def _stop_handles(self, key: SweepKey, handles: list[ServiceHandle]) -> dict[int, str]:
        """Stop ``handles`` through their runner, in one sweep; why each one that was not
        stopped was not, by ``id(handle)``."""
        runner_name, stop_signal, grace = key
        failed: dict[int, str] = {}
        try:
            await self._runners.get(runner_name).stop_many(handles, stop_signal, grace)
        except StopFailed as exc:
            log.error("stopping %d %s instance(s): %s", len(handles), runner_name, exc)
            failed.update((id(handle), why) for handle, why in exc.failed)
        except (RunnerError, UnknownRunner) as exc:  # a runner that does not say which
            log.error("stopping %d %s instance(s): %s", len(handles), runner_name, exc)
            failed.update((id(handle), str(exc)) for handle in handles)
        except Exception:  # a runner's bug must not cut the other runners' stops short
            log.exception("stopping %d %s instance(s) failed", len(handles), runner_name)
            failed.update((id(handle), "internal error in its runner; see the daemon log") for handle in handles)
        return failed
