"""What each job does to its service, run by the service's :class:`~.jobs.Owner`.

A job acts and returns (:class:`~.outcomes.JobResult`): it applies starts and stops to
instances and persists what the user asked for, but never waits for an instance to
settle (the caller does that, outside the owner, so the next job of the service is not
held up by a slow start). A service that is gone (removed, replaced by a reload, or the
daemon shutting down) starts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hive.config import HiveConfig, ServiceConfig

from .instance_task import InstanceTasks
from .jobs import Job, JobKind
from .machine import READY
from .outcomes import JobResult, Launched
from .records import Records
from .registry import Registry
from .rollout import Rollouts
from .runtime import ServiceRuntime
from .stopping import Left, Stopper

if TYPE_CHECKING:
    from ..logs import LogHub
    from ..store import StateWriter

__all__ = ["Actions"]


class Actions:
    def __init__(
        self, *, registry: Registry, instances: InstanceTasks, stopper: Stopper, records: Records,
        writer: StateWriter, logs: LogHub, rollouts: Rollouts,
    ) -> None:
        self._registry = registry
        self._rollouts = rollouts
        self._instances = instances
        self._stopper = stopper
        self._records = records
        self._writer = writer
        self._logs = logs

    async def run(self, service: ServiceRuntime, job: Job) -> JobResult:
        """Carry out ``job`` on ``service`` (the owner's job runner)."""
        kind = job.kind
        if kind in (JobKind.START, JobKind.RESTART):
            self._reset_restarts(service)
        if kind is JobKind.START:
            return JobResult(launched=await self._start(service))
        if kind is JobKind.STOP:
            return JobResult(left=await self._stop(service, persist=job.argument is None))
        if kind is JobKind.RESTART:
            left = await self._stopper.stop(service.instances)
            return JobResult(launched=await self._start(service), left=left)
        if kind is JobKind.SCALE:
            return JobResult(launched=await self._scale(service, job.argument))
        if kind is JobKind.REPLACE:
            return await self._replace(service, *job.argument)
        if kind is JobKind.REMOVE:
            return JobResult(left=await self._remove(service, forget=job.argument))
        if kind is JobKind.ROLLOUT:
            return await self._rollout(service)
        raise AssertionError(f"unknown job {kind}")

    async def start_together(self, services: list[ServiceRuntime]) -> dict[ServiceRuntime, JobResult]:
        """A start job of each service (claimed from its idle owner), run as one: one
        save of what was asked, then each service's instances launched."""
        for service in services:
            self._reset_restarts(service)
        self.mark_desired(services, "running")
        await self._writer.flush()
        return {
            service: JobResult(launched={} if self._registry.gone(service) else
                               {instance: self._instances.start(instance) for instance in service.wanted()})
            for service in services
        }

    async def stop_together(self, services: list[ServiceRuntime]) -> dict[ServiceRuntime, JobResult]:
        """A stop job of each service (claimed from its idle owner), run as one: one save
        of what was asked, one sweep of their instances. What each could not stop now."""
        self.mark_desired(services, "stopped")
        await self._writer.flush()
        left = await self._stopper.stop([instance for service in services for instance in service.instances])
        by_service: dict[ServiceRuntime, Left] = {service: [] for service in services}
        for instance, why in left:
            by_service[instance.service].append((instance, why))
        return {service: JobResult(left=service_left) for service, service_left in by_service.items()}

    def mark_desired(self, services: list[ServiceRuntime], desired: str) -> None:
        """Mark the services wanted ``desired`` ("running" or "stopped") and queue the
        rows: a command of many services marks them all before submitting its jobs (no
        await in between: they queue as one command), and each job flushes before it
        acts, so the rows go to disk in one transaction before the first process starts
        or is signalled (a daemon killed in between leaves all or nothing; the next one
        carries out the rest). Bench: bench/peers.py "stop of 100"."""
        for service in services:
            if service.desired != desired:
                service.desired = desired
                service.notify()
                self._records.save_desired(service)

    def _reset_restarts(self, service: ServiceRuntime) -> None:
        """A start a command asks for begins the count again: restarts, backoff, start limit."""
        for instance in service.instances:
            instance.backoff = None
            instance.restarts.clear()
        if service.restart_count:
            service.restart_count = 0
            service.notify()
            self._records.save_desired(service)

    async def _save_desired(self, service: ServiceRuntime) -> None:
        # What the user asked for is on disk before the first process exists: a daemon
        # killed in between leaves either nothing started or everything wanted (the next
        # one then starts the rest, and stops what runs unwanted).
        self._records.save_desired(service)
        await self._writer.flush()

    async def _start(self, service: ServiceRuntime) -> Launched:
        if self._registry.gone(service):
            return {}
        self.mark_desired([service], "running")
        await self._writer.flush()  # (returns at once when nothing is left to write)
        if self._registry.gone(service):
            return {}
        return {instance: self._instances.start(instance) for instance in service.wanted()}

    async def _stop(self, service: ServiceRuntime, *, persist: bool) -> Left:
        if persist:
            self.mark_desired([service], "stopped")
            await self._writer.flush()
        return await self._stopper.stop(service.instances)

    async def _scale(self, service: ServiceRuntime, count: int) -> Launched:
        previous, service.scale = service.scale, count
        service.notify()
        await self._save_desired(service)
        service.grow(count)
        if count < previous:
            leaving = sorted(service.instances[count:], key=lambda i: i.index, reverse=True)
            await self._stopper.stop(leaving)
            del service.instances[max(count, 1) :]
            service.notify()
            return {}
        if service.desired != "running" or self._registry.gone(service):
            return {}
        return {instance: self._instances.start(instance) for instance in service.wanted()}

    async def _rollout(self, service: ServiceRuntime) -> JobResult:
        """Blue-green: a new generation switched to once healthy, if one serves now
        (see rollout.py); else a restart."""
        rollout = service.config.rollout
        settings = rollout.blue_green if rollout is not None and service.blue_green else None
        serving = any(instance.phase in READY for instance in service.instances)
        if settings is None or not serving or self._registry.gone(service):
            left = await self._stopper.stop(service.instances)
            return JobResult(launched=await self._start(service), left=left)
        self.mark_desired([service], "running")
        await self._writer.flush()
        return await self._rollouts.run(service, settings)

    async def _replace(
        self, service: ServiceRuntime, config: ServiceConfig, project: HiveConfig | None, fingerprint: bytes
    ) -> JobResult:
        """A new configuration: stopped if it ran, then started again with it if it ran
        or was wanted running. A blue-green service that serves, and stays blue-green,
        rolls out to it instead."""
        if service.blue_green and any(instance.phase in READY for instance in service.instances):
            service.config, service.project, service.fingerprint = config, project, fingerprint
            service.notify()
            self._registry.index_exposes()
            return await self._rollout(service)
        was_live = any(instance.live for instance in service.instances)
        if was_live:
            await self._stopper.stop(service.instances)
        service.config, service.project, service.fingerprint = config, project, fingerprint
        service.notify()
        self._registry.index_exposes()
        if (was_live or service.desired == "running") and not self._registry.gone(service):
            return JobResult(launched=await self._start(service))
        return JobResult()

    async def _remove(self, service: ServiceRuntime, *, forget: bool) -> Left:
        left = await self._stopper.stop(service.instances)
        services = self._registry.services
        if services.get(service.fqn) is service:
            del services[service.fqn]
            self._registry.index_exposes()
        if forget:
            self._records.forget_service(service.fqn)
            for instance in service.instances:
                self._logs.forget(instance.fqn)
        return left
