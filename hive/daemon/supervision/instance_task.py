"""The task that drives one live instance, from its start (or adoption) until nothing
of it runs.

:meth:`InstanceTasks.start` applies a start to an instance and, when it was not live,
starts its task. The task (``_run``) waits for the instance's dependencies, spawns it
through its runner (pre-up hooks and build first), awaits the runner's exit
notification (no polling), then decides by the restart policy; when it is told to stop
it ends the instance (post-down hooks) and returns, unless a start came meanwhile. Every
phase change goes through :class:`~.phases.Phases`; a commanded stop is never counted as
a crash and never restarted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel

from hive.config import RuntimeTemplateError
from hive_client import (
    LogLevel,
    ServiceCrashed,
    ServiceExited,
    ServiceRestarting,
    ServiceStarted,
    ServiceStopped,
)
from runners.base import ExitStatus, RunnerError, ServiceHandle

from ..health import HealthMonitor
from ..runner_registry import RunnerRegistry, UnknownRunner
from .dependencies import Dependencies
from .launch import Launcher, config_digest, port_in_use
from .machine import LIVE, READY, Input, Phase
from .phases import Phases
from .records import Records
from .registry import Registry
from .runtime import Backoff, InstanceRuntime
from .stopping import Stopper

if TYPE_CHECKING:
    from ..events import EventBus
    from ..logs import LogHub
    from ..settings import RestartSection

__all__ = ["InstanceTasks"]

log = logging.getLogger("hive.supervisor")


class InstanceTasks:
    def __init__(
        self, *, tasks: anyio.abc.TaskGroup, runners: RunnerRegistry, registry: Registry, phases: Phases,
        launcher: Launcher, dependencies: Dependencies, stopper: Stopper, records: Records,
        bus: EventBus, logs: LogHub, restart_defaults: Callable[[], RestartSection],
    ) -> None:
        self._tasks = tasks
        self._runners = runners
        self._registry = registry
        self._phases = phases
        self._launcher = launcher
        self._dependencies = dependencies
        self._stopper = stopper
        self._records = records
        self._bus = bus
        self._logs = logs
        self._restart_defaults = restart_defaults  # read at each restart: settings reload

    def start(self, instance: InstanceRuntime) -> int | None:
        """Apply a start; its settle count when there is an outcome to wait for."""
        before = instance.phase
        phase = self._phases.apply(instance, Input.START)
        if phase is Phase.WAITING and before not in LIVE:
            self.spawn_task(instance, None)
        elif before is Phase.BACKOFF:
            instance.wakeup.set()  # out of its backoff now
        elif phase is Phase.STOPPING_TO_START or phase in READY:
            return None
        return instance.settles

    def spawn_task(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
        """Start the instance's task (supervising ``adopted``, a process an earlier daemon started)."""
        instance.wakeup = anyio.Event()
        self._tasks.start_soon(self._run, instance, adopted)

    async def _run(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
        """The instance's task: from its start (or adoption) until nothing of it runs."""
        service = instance.service
        handle = adopted
        ran = False  # a process ran since the last start (post-down hooks then apply)
        fresh = adopted is None  # an adopted process had its post-up hooks already
        try:
            while True:
                if instance.stopping:
                    await self._end(instance, ran)
                    if instance.phase is not Phase.WAITING:
                        break
                    ran = False  # a start came while it stopped: it runs again
                if handle is None:
                    handle = await self._spawn(instance)
                    if handle is None:
                        if instance.stopping or await self._maybe_restart(instance, ExitStatus(), 0.0):
                            continue
                        break
                    if instance.stopping:  # told to stop while its runner started it
                        config = service.config
                        await handle.stop(config.stop_signum(), config.stop_grace)
                        await self._ended(instance)
                        handle = None
                        continue
                ran = True
                status = await self._supervise(instance, handle, fresh=fresh)
                handle = None
                fresh = True
                if instance.stopping:
                    continue
                if not await self._after_exit(instance, status):
                    break
        except Exception:
            log.exception("supervision of %s failed", instance.fqn)
            instance.last_error = "internal error in the supervisor; see the daemon log"
            self._phases.force(instance, Phase.CRASHED)
        finally:
            if instance.live:  # cancelled (the daemon's exit): nothing of it runs any more
                self._phases.force(instance, Phase.STOPPED)
            instance.handle = None
            instance.finished()
            service.notify(instance)

    async def _end(self, instance: InstanceRuntime, ran: bool) -> None:
        """A stopping instance's process is gone: its post-down hooks, then stopped (or
        crashed, after failed post-up hooks; or started again, after a start)."""
        service = instance.service
        instance.healthy = None
        if instance.phase is Phase.STOPPING_TO_START and (
            self._registry.gone(service) or instance not in service.wanted() or service.desired != "running"
        ):
            self._phases.apply(instance, Input.STOP)  # the start it waited for no longer holds
        if ran and service.config.hooks.post_down:
            with anyio.CancelScope(shield=True):
                await self._stopper.down_hooks(instance, "post-down")
        if instance.phase is Phase.FAILING:
            self._phases.note(instance, instance.last_error or "failed", LogLevel.ERROR)
        elif instance.phase is Phase.STOPPING:
            self._phases.note(instance, "stopped")
            self._bus.publish(ServiceStopped(fqn=instance.fqn, exit_code=instance.exit_code,
                                             generation=instance.event_generation))
        self._phases.apply(instance, Input.ENDED)

    async def _ended(self, instance: InstanceRuntime) -> None:
        """After a process stopped before its supervision began: its output read."""
        await self._logs.drain(instance.fqn)
        if not _shared(instance):
            self._logs.unfollow(instance.fqn)

    async def _spawn(self, instance: InstanceRuntime) -> ServiceHandle | None:
        """Start one instance; None (state and last_error set) if it could not."""
        service = instance.service
        config = service.config
        phases, launcher = self._phases, self._launcher
        instance.exit_code = None
        if not await self._dependencies.wait_ready(instance):
            return None
        if instance.stopping:
            return None
        phases.apply(instance, Input.DEPENDENCIES_READY)
        try:
            runner = self._runners.get(config.runner.type)
            spec = launcher.run_spec(instance)
            if config.hooks.pre_up or config.build is not None:
                # pre-up hooks, then the build, then the runner (hive-yaml §13, §9).
                with anyio.CancelScope() as preparing:
                    instance.preparing = preparing
                    problem = await launcher.prepare_start(instance)
                instance.preparing = None
                if preparing.cancelled_caught or instance.stopping:
                    return None
                if problem is not None:
                    phases.start_failed(instance, problem)
                    return None
                spec = launcher.run_spec(instance)  # again: a build may have changed what it runs
            conflict = port_in_use(instance.ports)
            if conflict is not None and launcher.picks_ports(instance):
                # Ports the daemon picked earlier, taken since: pick others.
                instance.ports = {}
                spec = launcher.run_spec(instance)
                conflict = port_in_use(instance.ports)
            if conflict is not None:
                port, name = conflict
                phases.fail(instance, f"cannot start {instance.fqn}: port {port} ({name}) is already in use",
                            Input.PORT_TAKEN)
                return None
            instance.config_digest = config_digest(service)
            handle = await runner.start(spec)
        except (RunnerError, UnknownRunner, RuntimeTemplateError) as exc:
            phases.fail(instance, f"cannot start {instance.fqn}: {exc}")
            return None
        output = handle.take_output()
        if output is not None:  # memory captures, this run's own
            self._logs.follow(instance.fqn, output=output, owner=handle)
        else:
            self._logs.follow(instance.fqn)
        return handle

    async def _supervise(self, instance: InstanceRuntime, handle: ServiceHandle, *, fresh: bool) -> ExitStatus:
        """From spawn (or adoption) to exit."""
        service = instance.service
        phases = self._phases
        post_up = fresh and bool(service.config.hooks.post_up)
        instance.handle = handle
        handle.notice = lambda message: phases.note(instance, message, LogLevel.WARN)

        def engine(back: bool) -> None:
            if instance.handle is handle:  # not a handle an earlier run left behind
                phases.apply(instance, Input.ENGINE_BACK if back else Input.ENGINE_AWAY)

        handle.engine = engine
        instance.last_error = None
        now = datetime.now(UTC)
        if fresh or instance.started_at is None:
            instance.started_at = now
            instance.started_monotonic = time.monotonic()
        else:  # adopted: it started when its record says (never later than now)
            ran = max(0.0, (now - instance.started_at).total_seconds())
            instance.started_monotonic = time.monotonic() - ran
        phases.note(instance, f"started (pid {handle.pid})" if handle.pid else "started")
        self._bus.publish(ServiceStarted(fqn=instance.fqn, pid=handle.pid, container_id=handle.container_id,
                                         generation=instance.event_generation))
        # Record it for adoption after the other starts of this batch have spawned: the
        # record needs the process's start time, which the kernel gives once its exec is
        # done; by then it is. Running (a start's answer) once recorded.
        await anyio.lowlevel.checkpoint()
        if service.current(instance):  # a rollout's new generation is recorded at its switch
            self._records.record(instance, handle)
        if fresh and not instance.stopping:  # (an adopted one is running already)
            phases.apply(instance, Input.SPAWNED_WITH_POST_UP if post_up else Input.SPAWNED)
        if service.config.healthchecks:
            inside = handle.check_exec()  # a container's checks run in it, with its environment
            instance.health = HealthMonitor(
                instance.fqn,
                service.config.healthchecks,
                ports=instance.ports,
                env={} if inside else self._launcher.health_env(instance),
                on_change=lambda healthy, message: phases.health_changed(instance, healthy, message),
                exec_check=inside,
            )
        if instance.health is not None or post_up:
            async with anyio.create_task_group() as watchers:
                if instance.health is not None:
                    watchers.start_soon(instance.health.run)
                if post_up:
                    watchers.start_soon(self._post_up, instance, handle)
                status = await handle.wait()
                watchers.cancel_scope.cancel()
        else:
            status = await handle.wait()
        instance.health = None
        instance.handle = None
        instance.exit_code = status.exit_code
        await self._logs.drain(instance.fqn)  # not cut short by a cancel
        if not _shared(instance):  # (the other generation writes the same files)
            self._logs.unfollow(instance.fqn)
        else:  # its own memory captures, if it has any
            self._logs.unfollow(instance.fqn, handle)
        if service.current(instance):  # the record slot is the serving generation's
            self._records.forget(service.fqn, instance.index)
        return status

    async def _post_up(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """post-up hooks once the instance is ready (healthy, or running without checks);
        if they fail, the instance is rolled back: stopped, and left crashed with why."""
        service = instance.service
        while not instance.up:
            await service.changed.wait()
        outcome = await self._launcher.run_hooks(instance, "post-up", service.config.hooks.post_up)
        if instance.phase is not Phase.POST_UP:
            return  # told to stop meanwhile
        if outcome.ok:
            self._phases.apply(instance, Input.POST_UP_DONE)
            if instance.healthy is False:  # it failed its checks while the hooks ran
                self._phases.apply(instance, Input.UNHEALTHY)
            return
        instance.last_error = f"{outcome.message}; the instance was stopped"
        self._phases.apply(instance, Input.POST_UP_FAILED)
        config = service.config
        await handle.stop(config.stop_signum(), config.stop_grace)

    async def _after_exit(self, instance: InstanceRuntime, status: ExitStatus) -> bool:
        """Publish the exit and apply the restart policy; True to run again."""
        ran_for = time.monotonic() - instance.started_monotonic
        instance.healthy = None
        if status.success:
            self._phases.note(instance, f"{status.describe()}")
            self._bus.publish(ServiceExited(fqn=instance.fqn, exit_code=status.exit_code))
            self._phases.apply(instance, Input.EXITED_OK)
        else:
            instance.last_error = status.describe()
            self._phases.note(instance, status.describe(), LogLevel.ERROR)
            self._bus.publish(
                ServiceCrashed(
                    fqn=instance.fqn,
                    exit_code=status.exit_code,
                    signal=status.signal,
                    message=status.describe(),
                )
            )
            self._phases.apply(instance, Input.EXITED_FAILED)
        return await self._maybe_restart(instance, status, ran_for)

    def _start_limit_hit(self, instance: InstanceRuntime) -> bool:
        """Restarted ``start_limit_burst`` times within ``start_limit_interval``: left as it
        is (crashed), with the reason, until a command starts it. Else the restart is counted."""
        settings = self._restart_defaults()
        burst, interval = settings.start_limit_burst, settings.start_limit_interval
        now = time.monotonic()
        restarts = instance.restarts
        while restarts and now - restarts[0] > interval:
            restarts.popleft()
        if burst and len(restarts) >= burst:
            last = f" (last: {instance.last_error})" if instance.last_error else ""
            instance.last_error = (f"start limit hit: restarted {burst} times within {interval:g} s{last}; "
                                   f"`hive service start {instance.service.fqn}` tries again")
            self._phases.note(instance, instance.last_error, LogLevel.ERROR)
            instance.service.notify(instance)
            return True
        restarts.append(now)
        return False

    async def _maybe_restart(self, instance: InstanceRuntime, status: ExitStatus, ran_for: float) -> bool:
        """After an exit or a failed start (``status`` unknown then): True to run again
        (its phase is then waiting, or stopping when a stop came during the delay)."""
        service = instance.service
        policy = service.config.restart.policy
        if self._registry.shutting_down or not service.current(instance):
            return False  # (a rollout's generation that fails is rolled back, not restarted)
        if policy == "never" or (policy == "on-failure" and status.success):
            return False
        if self._start_limit_hit(instance):
            return False
        if instance.backoff is None:
            defaults = self._restart_defaults()
            spec = service.config.restart
            instance.backoff = Backoff(
                delay=defaults.delay if spec.delay is None else spec.delay,
                max_delay=defaults.max_delay if spec.max_delay is None else spec.max_delay,
                reset_after=defaults.reset_after if spec.reset_after is None else spec.reset_after,
                jitter=defaults.jitter if spec.jitter is None else spec.jitter,
            )
        delay = instance.backoff.next_delay(ran_for)
        service.restart_count += 1
        service.notify()
        self._records.save_desired(service)
        self._bus.publish(ServiceRestarting(fqn=instance.fqn, attempt=instance.backoff.attempt, delay=delay))
        if delay > 0:
            self._phases.apply(instance, Input.RETRY_LATER)
            self._phases.note(instance, f"restarting in {delay:.2f} s (attempt {instance.backoff.attempt})")
            with anyio.move_on_after(delay):
                await instance.wakeup.wait()
            instance.wakeup = anyio.Event()
        if not instance.stopping:
            self._phases.apply(instance, Input.WAIT)
        return True


def _shared(instance: InstanceRuntime) -> bool:
    """Whether another generation of the same instance runs (during a rollout): its
    output goes to the same capture files, which must stay followed."""
    return any(other is not instance and other.index == instance.index and other.handle is not None
               for other in instance.service.generations())
