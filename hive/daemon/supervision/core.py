"""The supervisor: commands on services, and one task per live instance.

Each live instance is driven by one task (:meth:`Supervisor._run_instance`): it waits
for its dependencies, spawns through its runner, awaits the runner's exit notification
(no polling), then decides by the restart policy. Its phase changes only in
:meth:`Supervisor._apply`, through the table in :mod:`.machine`.

Commands (start, stop, restart, scale, remove, replace) are jobs that the service's
:class:`~.jobs.Owner` runs one at a time (see :mod:`.jobs`): a job acts, then returns;
callers wait for the outcome (:class:`~hive_client.InstanceOutcome`) outside the owner,
with their own deadline. What the user asked for (started, stopped, the scale) is
persisted before the first process exists; a commanded stop is never counted as a crash
and never restarted.

Dependencies start first: an instance waits, event-driven, until each of its
dependencies is ready (healthy when it has health checks, else running) before it
spawns; stops go the other way, dependents first, each level in parallel.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from hive.config import (
    HiveConfig,
    HookStep,
    RuntimeTemplateError,
    ServiceConfig,
    UsesSpec,
    build_environment,
    render_runtime,
)
from hive_client import (
    ErrorCode,
    InstanceOutcome,
    LogLevel,
    ServiceCrashed,
    ServiceExited,
    ServiceHealthChanged,
    ServiceInfo,
    ServiceRestarting,
    ServiceStarted,
    ServiceStateChanged,
    ServiceStopped,
    __version__,
)
from runners.base import ExitStatus, RunnerError, RunSpec, ServiceHandle, StopFailed

from ..errors import RequestError
from ..exposure import alias_of, provided_vars, renamed_vars, verify_secret
from ..health import HealthMonitor
from ..runner_registry import RunnerRegistry, UnknownRunner
from .jobs import Job, JobKind, OwnerClosed
from .jobs import Owner as Owner
from .machine import LIVE, READY, SETTLED, WIRE_STATE, Input, Phase, next_phase
from .runtime import Backoff, InstanceRuntime, ServiceRuntime
from .sweeps import StopSweeps, SweepKey

if TYPE_CHECKING:
    from ..app import App
    from ..build import BuildResult
    from ..hooks import ContainerStepRunner, HookOutcome, OutputSink

__all__ = ["SourceChange", "Supervisor"]

log = logging.getLogger("hive.supervisor")

# How long a start waits for a dependency (or a used service) to become ready.
DEPENDENCY_TIMEOUT = 60.0
# How long a start, restart or scale waits for its instances to settle before answering.
SETTLE_TIMEOUT = 30.0
MAX_INSTANCES = 1000
# A process whose service is gone gets this long after SIGTERM (its own grace is gone too).
_ORPHAN_GRACE = 10.0
# A build that takes longer is cut off (and the start fails with its output).
BUILD_TIMEOUT = 3600.0
# The environment marker that lets a new daemon find services a killed one started
# but had not yet recorded.
MARKER_ENV = "HIVE_SUPERVISOR"


@dataclass
class SourceChange:
    """What a source reload (or an API edit of a SQLite source) changes: the one input of
    :meth:`Supervisor.apply`. Each entry: fqn -> (config, fingerprint)."""

    source: str
    project: HiveConfig | None
    added: dict[str, tuple[ServiceConfig, bytes]] = field(default_factory=dict)
    changed: dict[str, tuple[ServiceConfig, bytes]] = field(default_factory=dict)
    unchanged: dict[str, tuple[ServiceConfig, bytes]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    start_added: bool = False  # the source runs: what it gains starts too


# Instances a start (restart, scale) acted on: each with its settle count then, or None
# when there is nothing to wait for (it was up already, or it starts once stopped).
Launched = dict[InstanceRuntime, int | None]


@dataclass
class JobResult:
    """What a job did: the instances it started, and those it could not stop now."""

    launched: Launched = field(default_factory=dict)
    left: list[tuple[InstanceRuntime, str]] = field(default_factory=list)


def _state_row(service: ServiceRuntime) -> tuple[tuple[str, str], str, tuple[Any, ...]]:
    return (
        ("services", service.fqn),
        "INSERT INTO services (fqn, desired, instances, restart_count, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(fqn) DO UPDATE SET desired = excluded.desired, "
        "instances = excluded.instances, restart_count = excluded.restart_count, "
        "updated_at = excluded.updated_at",
        (service.fqn, service.desired, service.scale, service.restart_count, time.time()),
    )


class Supervisor:
    def __init__(self, app: App, task_group: anyio.abc.TaskGroup, runners: RunnerRegistry) -> None:
        self.app = app
        self._tasks = task_group
        self.runners = runners
        self.services: dict[str, ServiceRuntime] = {}
        self.base_env = dict(os.environ)
        self.base_env[MARKER_ENV] = str(app.home.root)
        # Hooks and builds do not carry the marker: a new daemon must not take a hook
        # left running by a killed one for the service.
        self.hook_base_env = {k: v for k, v in self.base_env.items() if k != MARKER_ENV}
        self._persisted: dict[str, dict[str, Any]] = {}
        self._process_records: dict[tuple[str, int], dict[str, Any]] = {}
        self._saved_offsets: dict[str, tuple[int, int]] = {}
        # expose name -> provider; a change wakes consumers waiting for one.
        self.exposes: dict[str, ServiceRuntime] = {}
        self._exposes_changed: anyio.Event | None = None
        self.shutting_down = False
        # How long a start waits for a dependency, and for its instances to settle.
        self.dependency_timeout = DEPENDENCY_TIMEOUT
        self.settle_timeout = SETTLE_TIMEOUT
        self._sweeps = StopSweeps(self._stop_handles)
        # The fqns sorted, for listings, while the set of services stays the same.
        self._fqns: list[str] = []
        self._fqns_sorted: list[str] = []

    # --- registry --------------------------------------------------------------------

    async def load_persisted(self) -> None:
        """Read desired states and process records written by earlier daemons."""
        store = self.app.store
        for row in await store.fetch_all("SELECT fqn, desired, instances, restart_count FROM services"):
            self._persisted[row[0]] = {"desired": row[1], "instances": row[2], "restart_count": row[3]}
        for row in await store.fetch_all(
            "SELECT fqn, instance, runner, pid, start_time, handle FROM processes"
        ):
            try:
                handle = msgspec.json.decode(row[5]) if row[5] else {}
            except msgspec.DecodeError:
                handle = {}
            self._process_records[(row[0], int(row[1]))] = {
                "runner": row[2], "pid": row[3], "start_time": row[4], "handle": handle,
            }

    def get(self, fqn: str) -> ServiceRuntime:
        service = self.services.get(fqn.partition("#")[0])
        if service is None:
            raise RequestError.not_found(f"no service {fqn!r}")
        return service

    def find_instance(self, fqn: str) -> InstanceRuntime | None:
        """The instance ``fqn`` (``source:service``, ``source:service#N``) names, or None.
        A lookup, not a scan: event watchers call it for every event."""
        base, _, number = fqn.partition("#")
        service = self.services.get(base)
        if service is None or (number and not (number.isascii() and number.isdigit())):
            return None  # ("²".isdigit() is true; int() refuses it)
        index = int(number) if number else 0
        if index < len(service.instances) and service.instances[index].index == index:
            return service.instances[index]
        return None

    def all_records(self) -> list[InstanceRuntime]:
        return [instance for service in self.services.values() for instance in service.instances]

    def in_order(self, source: str | None = None) -> list[InstanceRuntime]:
        """Every instance (of ``source``): services by fqn, each one's by index."""
        services = self.services
        fqns = list(services)
        if fqns != self._fqns:  # a service came or went: sort again (not per listing)
            self._fqns, self._fqns_sorted = fqns, sorted(fqns)
        return [
            instance
            for fqn in self._fqns_sorted
            if source is None or services[fqn].source == source
            for instance in services[fqn].instances
        ]

    def register(
        self, source: str, config: ServiceConfig, project: HiveConfig | None, fingerprint: bytes
    ) -> ServiceRuntime:
        # Load its runner now (an import, the first time), not on the path of its start.
        with contextlib.suppress(UnknownRunner):
            self.runners.get(config.runner.type)
        service = ServiceRuntime(source, config, project, fingerprint)
        service.owner = Owner(service.fqn, self._tasks, partial(self._run_job, service))
        persisted = self._persisted.get(service.fqn)
        if persisted is not None:
            service.desired = persisted["desired"]
            service.restart_count = persisted["restart_count"]
            service.scale = persisted["instances"]
            service.grow(service.scale)
        self.services[service.fqn] = service
        self._index_exposes()
        return service

    def _index_exposes(self) -> None:
        exposes = {s.config.expose.name: s for s in self.services.values() if s.config.expose}
        if exposes != self.exposes:
            self.exposes = exposes
            changed, self._exposes_changed = self._exposes_changed, None
            if changed is not None:
                changed.set()

    async def unregister(self, fqn: str, *, forget: bool) -> list[InstanceOutcome]:
        """Stop the service and remove it; ``forget``: its stored state goes too."""
        service = self.services.get(fqn)
        if service is None:
            return []
        assert service.owner is not None
        job = service.owner.submit(JobKind.REMOVE, forget)
        service.owner.close()  # what comes after the removal finds no service
        result: JobResult = await job.wait()
        return [_pending(instance, why) for instance, why in result.left]

    async def apply(self, change: SourceChange) -> None:
        """Apply a reload's plan: removed services stop and go, changed ones are stopped
        and started again with their new configuration (if they ran or were wanted),
        new ones are registered (and started when ``change.start_added``)."""
        jobs: list[Job] = []
        for fqn in change.removed:
            service = self.services.get(fqn)
            if service is not None and service.owner is not None:
                jobs.append(service.owner.submit(JobKind.REMOVE, True))
                service.owner.close()
        for fqn, (config, fingerprint) in change.changed.items():
            owner = self.services[fqn].owner
            assert owner is not None
            jobs.append(owner.submit(JobKind.REPLACE, (config, change.project, fingerprint)))
        for fqn, (config, fingerprint) in change.unchanged.items():
            service = self.services[fqn]
            service.config, service.project, service.fingerprint = config, change.project, fingerprint
            service.notify()
        for config, fingerprint in change.added.values():
            self.register(change.source, config, change.project, fingerprint)
        self._index_exposes()
        for job in jobs:
            await job.wait()
        if change.start_added and change.added and not self.shutting_down:
            await self.start(list(change.added), wait=None)

    # --- commands --------------------------------------------------------------------

    def _closure(self, fqns: Iterable[str]) -> list[ServiceRuntime]:
        """The services and, transitively, what they depend on (same source)."""
        seen: dict[str, ServiceRuntime] = {}
        pending = [self.get(fqn) for fqn in fqns]
        while pending:
            service = pending.pop()
            if service.fqn in seen:
                continue
            seen[service.fqn] = service
            for dependency in service.config.depends_on:
                dep = self.services.get(f"{service.source}:{dependency}")
                if dep is not None:
                    pending.append(dep)
        return list(seen.values())

    def _submit(self, service: ServiceRuntime, kind: JobKind, argument: Any = None) -> Job:
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        assert service.owner is not None
        try:
            return service.owner.submit(kind, argument)
        except OwnerClosed:
            raise RequestError.not_found(f"no service {service.fqn!r} (it is being removed)") from None

    async def start(self, fqns: Iterable[str], *, wait: float | None = -1.0) -> list[InstanceOutcome]:
        """Start services and, first, what they depend on; what became of each instance
        (after up to ``wait`` seconds, by default the settle timeout; None: not waited)."""
        if wait is not None and wait < 0:
            wait = self.settle_timeout
        jobs = [(service, self._submit(service, JobKind.START)) for service in self._closure(fqns)]
        return await self._started(jobs, wait)

    async def restart(self, fqn: str) -> list[InstanceOutcome]:
        """Stop, then start (the service and what it depends on)."""
        service = self.get(fqn)
        jobs = [(service, self._submit(service, JobKind.RESTART))]
        jobs += [(dep, self._submit(dep, JobKind.START)) for dep in self._closure([fqn]) if dep is not service]
        return await self._started(jobs, self.settle_timeout)

    async def _started(self, jobs: list[tuple[ServiceRuntime, Job]], wait: float | None) -> list[InstanceOutcome]:
        launched: Launched = {}
        superseded: list[InstanceOutcome] = []
        for service, job in jobs:
            result: JobResult = await job.wait()
            if job.kind is JobKind.STOP:  # a stop came before it ran, and took its place
                superseded += [InstanceOutcome(fqn=i.fqn, result="failed", state=str(i.state),
                                               reason="a stop came before the start ran")
                               for i in service.wanted()]
            launched.update(result.launched)
        return superseded + await self._outcomes(launched, wait)

    async def scale(self, fqn: str, count: int) -> list[InstanceOutcome]:
        """Run ``count`` copies; down: the highest instances stop first. Persisted."""
        service = self.get(fqn)
        if not 0 <= count <= MAX_INSTANCES:
            raise RequestError.invalid(f"instances must be between 0 and {MAX_INSTANCES}, not {count}")
        result: JobResult = await self._submit(service, JobKind.SCALE, count).wait()
        return await self._outcomes(result.launched, self.settle_timeout)

    async def stop(self, fqns: Iterable[str]) -> list[InstanceOutcome]:
        """Stop services, dependents first (among those being stopped), each level in
        parallel. An instance its runner cannot stop now (its engine is away) is left
        stopping (its runner carries the stop out when it can): ``pending``."""
        services = [self.get(fqn) for fqn in fqns]
        outcomes: list[InstanceOutcome] = []
        held: set[str] = set()  # what a service left running depends on: kept up for it
        for level in _reverse_levels(services):
            jobs: list[tuple[ServiceRuntime, Job]] = []
            for service in level:
                if service.fqn in held:
                    outcomes += [_pending(i, "left running: a service that depends on it is not stopped yet")
                                 for i in service.instances if i.live]
                    held.update(_dependencies(service))
                else:
                    jobs.append((service, self._submit(service, JobKind.STOP)))
            for service, job in jobs:
                result: JobResult = await job.wait()
                if job.kind is not JobKind.STOP:  # a start came before it ran, and took its place
                    outcomes += [InstanceOutcome(fqn=i.fqn, result="failed", state=str(i.state),
                                                 reason="a start came before the stop ran")
                                 for i in service.instances if i.live]
                for instance, why in result.left:
                    outcomes.append(_pending(instance, why))
                    held.update(_dependencies(instance.service))
        done = {outcome.fqn for outcome in outcomes}
        outcomes += [InstanceOutcome(fqn=i.fqn, result="done", state=str(i.state))
                     for s in services for i in s.instances if i.fqn not in done]
        return outcomes

    async def _outcomes(self, launched: Launched, timeout: float | None) -> list[InstanceOutcome]:
        """What became of each instance a start acted on, once each has settled (or the
        deadline passed). Only a settle after the start counts: never an earlier run's."""

        def settled(instance: InstanceRuntime, seen: int | None) -> bool:
            return seen is None or instance.settles > seen

        if timeout is not None:
            with anyio.move_on_after(timeout):
                for instance, seen in launched.items():
                    while not settled(instance, seen):
                        await instance.service.changed.wait()
            # Their process records on disk too: a daemon killed right after the answer
            # adopts them with everything it knew (their ports, where their logs were).
            await self.app.state_writer.flush()
        return [_judge(instance, seen) for instance, seen in launched.items()]

    # --- jobs: what each command does, run by the service's owner -------------------------

    async def _run_job(self, service: ServiceRuntime, job: Job) -> JobResult:
        kind = job.kind
        if kind is JobKind.START:
            return JobResult(launched=await self._start_job(service))
        if kind is JobKind.STOP:
            return JobResult(left=await self._stop_job(service, persist=job.argument is None))
        if kind is JobKind.RESTART:
            left = await self._stop_instances(service.instances)
            return JobResult(launched=await self._start_job(service), left=left)
        if kind is JobKind.SCALE:
            return JobResult(launched=await self._scale_job(service, job.argument))
        if kind is JobKind.REPLACE:
            return JobResult(launched=await self._replace_job(service, *job.argument))
        if kind is JobKind.REMOVE:
            return JobResult(left=await self._remove_job(service, forget=job.argument))
        raise AssertionError(f"unknown job {kind}")

    def _gone(self, service: ServiceRuntime) -> bool:
        return self.shutting_down or self.services.get(service.fqn) is not service

    async def _start_job(self, service: ServiceRuntime) -> Launched:
        if self._gone(service):
            return {}
        if service.desired != "running":
            service.desired = "running"
            self.app.state_writer.queue(*_state_row(service))
            # What the user asked for is on disk before the first process exists: a
            # daemon killed in between leaves either nothing started or everything wanted
            # (the next one then starts the rest, and stops what runs unwanted).
            await self.app.state_writer.flush()
            if self._gone(service):
                return {}
        return {instance: self._start_instance(instance) for instance in service.wanted()}

    def _start_instance(self, instance: InstanceRuntime) -> int | None:
        """Apply a start; its settle count when there is an outcome to wait for."""
        before = instance.phase
        phase = self._apply(instance, Input.START)
        if phase is Phase.WAITING and before not in LIVE:
            self._spawn_task(instance, None)
        elif before is Phase.BACKOFF:
            instance.wakeup.set()  # out of its backoff now
        elif phase is Phase.STOPPING_TO_START or phase in READY:
            return None
        return instance.settles

    def _spawn_task(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
        instance.wakeup = anyio.Event()
        self._tasks.start_soon(self._run_instance, instance, adopted)

    async def _stop_job(self, service: ServiceRuntime, *, persist: bool) -> list[tuple[InstanceRuntime, str]]:
        if persist and service.desired != "stopped":
            service.desired = "stopped"
            service.notify()
            self.app.state_writer.queue(*_state_row(service))
            await self.app.state_writer.flush()
        return await self._stop_instances(service.instances)

    async def _scale_job(self, service: ServiceRuntime, count: int) -> Launched:
        previous, service.scale = service.scale, count
        service.notify()
        self.app.state_writer.queue(*_state_row(service))
        await self.app.state_writer.flush()
        service.grow(count)
        if count < previous:
            leaving = sorted(service.instances[count:], key=lambda i: i.index, reverse=True)
            await self._stop_instances(leaving)
            del service.instances[max(count, 1) :]
            service.notify()
            return {}
        if service.desired != "running" or self._gone(service):
            return {}
        return {instance: self._start_instance(instance) for instance in service.wanted()}

    async def _replace_job(
        self, service: ServiceRuntime, config: ServiceConfig, project: HiveConfig | None, fingerprint: bytes
    ) -> Launched:
        """A new configuration: stopped if it ran, then started again with it if it ran
        or was wanted running."""
        was_live = any(instance.live for instance in service.instances)
        if was_live:
            await self._stop_instances(service.instances)
        service.config, service.project, service.fingerprint = config, project, fingerprint
        service.notify()
        self._index_exposes()
        if (was_live or service.desired == "running") and not self._gone(service):
            return await self._start_job(service)
        return {}

    async def _remove_job(self, service: ServiceRuntime, *, forget: bool) -> list[tuple[InstanceRuntime, str]]:
        left = await self._stop_instances(service.instances)
        if self.services.get(service.fqn) is service:
            del self.services[service.fqn]
            self._index_exposes()
        if forget:
            self.app.state_writer.queue(("services", service.fqn), "DELETE FROM services WHERE fqn = ?", (service.fqn,))
            self._persisted.pop(service.fqn, None)
            for instance in service.instances:
                self.app.logs.forget(instance.fqn)
        return left

    async def _stop_instances(self, instances: Sequence[InstanceRuntime]) -> list[tuple[InstanceRuntime, str]]:
        """Stop instances together: their runners stop all of theirs in one sweep. Every
        live one is told; those whose runner cannot stop them now (their engine is away)
        are left stopping, and returned with why; the others are waited for (a runner
        kills after the grace period, so the wait is bounded)."""
        stopping: list[InstanceRuntime] = []
        for instance in instances:
            if not instance.live:
                continue
            self._apply(instance, Input.STOP)
            stopping.append(instance)
            instance.wakeup.set()  # out of a backoff or a wait for its dependencies
            if instance.preparing is not None:
                instance.preparing.cancel()  # its pre-up hooks or build
        # pre-down hooks, before the signal; a failing one never blocks the stop.
        with_hooks = [i for i in stopping if i.handle is not None and i.service.config.hooks.pre_down]
        if with_hooks:
            async with anyio.create_task_group() as hooks:
                for instance in with_hooks:
                    hooks.start_soon(self._down_hooks, instance, "pre-down")
        groups: dict[SweepKey, list[ServiceHandle]] = {}
        for instance in stopping:
            handle = instance.handle
            if handle is not None:
                config = instance.service.config
                key = (config.runner.type, config.stop_signum(), config.stop_grace)
                groups.setdefault(key, []).append(handle)
        failed: dict[int, str] = {}  # id(handle) -> why its stop failed
        if groups:
            async with anyio.create_task_group() as stops:
                for key, handles in groups.items():
                    stops.start_soon(self._sweep, key, handles, failed)
        left: list[tuple[InstanceRuntime, str]] = []
        for instance in stopping:
            why = failed.get(id(instance.handle)) if instance.handle is not None else None
            if why is not None:
                self._note(instance, f"not stopped yet: {why}", LogLevel.WARN)
                instance.last_error = why
                instance.service.notify()
                left.append((instance, why))
                continue
            await instance.wait_finished()
        return left

    async def _down_hooks(self, instance: InstanceRuntime, event: str) -> None:
        steps = (
            instance.service.config.hooks.pre_down
            if event == "pre-down"
            else instance.service.config.hooks.post_down
        )
        outcome = await self._run_service_hooks(instance, event, steps)
        if not outcome.ok:
            self._note(instance, f"{outcome.message} (the stop goes on)", LogLevel.WARN)

    async def _sweep(self, key: SweepKey, handles: list[ServiceHandle], failed: dict[int, str]) -> None:
        failed.update(await self._sweeps.stop(key, handles))

    async def _stop_handles(self, key: SweepKey, handles: list[ServiceHandle]) -> dict[int, str]:
        """Stop ``handles`` through their runner (one sweep, see sweeps.py); why each one
        that was not stopped was not, by ``id(handle)``."""
        runner_name, stop_signal, grace = key
        failed: dict[int, str] = {}
        try:
            await self.runners.get(runner_name).stop_many(handles, stop_signal, grace)
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

    # --- the supervision loop -----------------------------------------------------------

    async def _run_instance(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
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
            self._force(instance, Phase.CRASHED)
        finally:
            if instance.live:  # cancelled (the daemon's exit): nothing of it runs any more
                self._force(instance, Phase.STOPPED)
            instance.handle = None
            instance.finished()
            service.notify()

    async def _end(self, instance: InstanceRuntime, ran: bool) -> None:
        """A stopping instance's process is gone: its post-down hooks, then stopped (or
        crashed, after failed post-up hooks; or started again, after a start)."""
        service = instance.service
        instance.healthy = None
        if instance.phase is Phase.STOPPING_TO_START and (
            self._gone(service) or instance not in service.wanted() or service.desired != "running"
        ):
            self._apply(instance, Input.STOP)  # the start it waited for no longer holds
        if ran and service.config.hooks.post_down:
            with anyio.CancelScope(shield=True):
                await self._down_hooks(instance, "post-down")
        if instance.phase is Phase.FAILING:
            self._note(instance, instance.last_error or "failed", LogLevel.ERROR)
        elif instance.phase is Phase.STOPPING:
            self._note(instance, "stopped")
            self.app.bus.publish(ServiceStopped(fqn=instance.fqn, exit_code=instance.exit_code))
        self._apply(instance, Input.ENDED)

    async def _ended(self, instance: InstanceRuntime) -> None:
        """After a process stopped before its supervision began: its output read."""
        await self.app.logs.drain(instance.fqn)
        self.app.logs.unfollow(instance.fqn)

    async def _spawn(self, instance: InstanceRuntime) -> ServiceHandle | None:
        """Start one instance; None (state and last_error set) if it could not."""
        service = instance.service
        config = service.config
        instance.exit_code = None
        if not await self._wait_dependencies(instance):
            return None
        if not await self._wait_uses(instance):
            return None
        if instance.stopping:
            return None
        self._apply(instance, Input.DEPENDENCIES_READY)
        try:
            runner = self.runners.get(config.runner.type)
            spec = self._run_spec(instance)
            if config.hooks.pre_up or config.build is not None:
                # pre-up hooks, then the build, then the runner (hive-yaml §13, §9).
                with anyio.CancelScope() as preparing:
                    instance.preparing = preparing
                    problem = await self._prepare_start(instance)
                instance.preparing = None
                if preparing.cancelled_caught or instance.stopping:
                    return None
                if problem is not None:
                    self._start_failed(instance, problem)
                    return None
                spec = self._run_spec(instance)  # again: a build may have changed what it runs
            conflict = _port_in_use(instance.ports)
            if conflict is not None and instance.index > 0:
                # Ports the daemon picked earlier, taken since: pick others.
                instance.ports = {}
                spec = self._run_spec(instance)
                conflict = _port_in_use(instance.ports)
            if conflict is not None:
                port, name = conflict
                self._fail(instance, f"cannot start {instance.fqn}: port {port} ({name}) is already in use",
                           Input.PORT_TAKEN)
                return None
            instance.config_digest = _config_digest(service)
            handle = await runner.start(spec)
        except (RunnerError, UnknownRunner, RuntimeTemplateError) as exc:
            self._fail(instance, f"cannot start {instance.fqn}: {exc}")
            return None
        self.app.logs.follow(instance.fqn)
        return handle

    async def _prepare_start(self, instance: InstanceRuntime) -> str | None:
        """The service's pre-up hooks and its build; why the start must not go on, if so."""
        config = instance.service.config
        if config.hooks.pre_up:
            outcome = await self._run_service_hooks(instance, "pre-up", config.hooks.pre_up)
            if not outcome.ok:
                return outcome.message
        if config.build is not None:
            result = await self._build(instance, force=False)
            if result is not None and not result.ok:
                return result.message
        return None

    async def _build(self, instance: InstanceRuntime, *, force: bool) -> BuildResult | None:
        """Build once for the instances that start together; None when nothing was built."""
        service = instance.service
        build = service.config.build
        if build is None:
            return None
        builds_before = service.builds
        async with service.build_lock:
            if not force and service.builds != builds_before:
                return None  # another instance built it while this one waited
            from ..build import build_needed, run_build  # only projects with builds pay for it

            if not build_needed(build, force=force):
                return None
            script = service.config.runner.script
            result = await run_build(
                build,
                fqn=service.fqn,
                env=self._hook_env(instance),
                output=lambda stream, text: self._captured(instance.fqn, "build", stream, text),
                shell=script.shell if script else None,
                timeout=BUILD_TIMEOUT,
            )
            if result.ok:
                service.builds += 1
            return result

    async def build(self, fqn: str) -> str:
        """Run a service's build now (``hive service build``); its output goes to the logs."""
        service = self.get(fqn)
        if service.config.build is None:
            raise RequestError.invalid(f"{service.fqn} has no build step")
        instance = service.instances[0]
        instance.ports = self._instance_ports(instance)
        result = await self._build(instance, force=True)
        assert result is not None
        if not result.ok:
            raise RequestError(ErrorCode.BUILD_FAILED, result.message)
        return f"{service.fqn} built"

    def _hook_env(self, instance: InstanceRuntime) -> dict[str, str]:
        """What hooks and builds run with: the service's environment, then Hive's
        variables about the instance (its rollout, one HIVE_PORT_<NAME> per port)."""
        config = instance.service.config
        env = self._environment(instance)
        env.pop(MARKER_ENV, None)
        env["HIVE_ROLLOUT_TYPE"] = config.rollout.type if config.rollout else "none"
        # Blue-green runs on its blue ports until its switching is active; others have no colour.
        blue_green = config.rollout is not None and config.rollout.type == "blue-green"
        env["HIVE_ROLLOUT_COLOR"] = "blue" if blue_green else ""
        for name, port in instance.ports.items():
            env[f"HIVE_PORT_{name.upper()}"] = str(port)
        return env

    async def _run_service_hooks(
        self, instance: InstanceRuntime, event: str, steps: Sequence[HookStep]
    ) -> HookOutcome:
        from ..hooks import HookOutcome, run_hooks  # only projects with hooks pay for it

        script = instance.service.config.runner.script
        try:
            env = self._hook_env(instance)
        except RuntimeTemplateError as exc:
            return HookOutcome(ok=False, message=f"{event} hook: {exc}")
        return await run_hooks(
            event,
            steps,
            env=env,
            output=lambda stream, text: self._captured(instance.fqn, "hook", stream, text, event),
            shell=script.shell if script else None,
            run_container=self.container_steps(instance.fqn),
        )

    def container_steps(self, fqn: str) -> ContainerStepRunner:
        """Runs hook steps of another runner type than ``script`` (a docker image, a
        compose service) through that runner's ``run_once``, on behalf of ``fqn``."""

        async def run(step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float) -> int:
            assert step.runner is not None
            runner = self.runners.get(step.runner.type)
            spec = RunSpec(fqn=fqn, env=dict(env), working_dir=step.working_dir,
                           config=dict(step.runner.config), stop_grace=0.0)
            return await runner.run_once(spec, output)

        return run

    def _captured(self, fqn: str, origin: str, stream: str, text: str, event: str = "") -> None:
        """Hook and build output into the service's logs, marked as such."""
        if stream == "hive":
            self.app.logs.captured(fqn, origin, text)  # already says what it is
        else:
            label = f"{event} hook" if origin == "hook" else "build"
            self.app.logs.captured(fqn, origin, f"[{label}] {text}")

    def _run_spec(self, instance: InstanceRuntime) -> RunSpec:
        service = instance.service
        config = service.config
        instance.ports = self._instance_ports(instance)
        env = self._environment(instance)
        script = config.runner.script
        command = (
            render_runtime(script.run, ports=instance.ports, uses=instance.uses_ports) if script else ""
        )
        stdout_path, stderr_path = self.app.logs.capture_paths(instance.fqn)
        return RunSpec(
            fqn=instance.fqn,
            command=command,
            working_dir=config.working_dir(),
            env=env,
            shell=script.shell if script else None,
            stdout_path=str(stdout_path),
            stderr_path=str(stderr_path),
            stop_signal=config.stop_signum(),
            stop_grace=config.stop_grace,
            config=_render_config(config.runner.config, instance) if not script else {},
        )

    def _instance_ports(self, instance: InstanceRuntime) -> dict[str, int]:
        """The first instance takes the configured ports; the others get free ports the
        daemon picks once and keeps while it can."""
        configured = instance.service.config.ports()
        if instance.index == 0:
            return configured
        if set(instance.ports) == set(configured):
            return instance.ports
        return {name: _free_port() for name in configured}

    def _environment(self, instance: InstanceRuntime) -> dict[str, str]:
        """Layers, lowest first: the daemon's environment, what used services provide,
        the service's own (global, then service), then Hive's variables."""
        service = instance.service
        base = {**self.base_env, **instance.injected} if instance.injected else self.base_env
        env = build_environment(
            service.project, service.config, base, ports=instance.ports, uses=instance.uses_ports
        )
        env.update(
            HIVE_SERVICE_FQN=service.fqn,
            HIVE_SOURCE_NAME=service.source,
            HIVE_SERVICE_NAME=service.name,
            HIVE_INSTANCE=str(instance.index),
        )
        return env

    async def _wait_dependencies(self, instance: InstanceRuntime) -> bool:
        service = instance.service
        for name in service.config.depends_on:
            dependency = self.services.get(f"{service.source}:{name}")
            if dependency is None:
                continue
            waiting = f"waiting for {dependency.fqn}"
            try:
                with anyio.fail_after(self.dependency_timeout):
                    while not any(i.ready for i in dependency.instances):
                        if instance.stopping:
                            return False
                        failed = [
                            i for i in dependency.instances
                            if i.phase in (Phase.CRASHED, Phase.EXITED, Phase.PORT_CONFLICT)
                        ]
                        if failed or dependency.desired != "running" or dependency.scale == 0:
                            state = failed[0].state if failed else dependency.instances[0].state
                            return self._fail(instance, f"dependency {dependency.fqn} failed (state: {state}), "
                                                        f"cannot start {instance.fqn}")
                        if instance.last_error != waiting:
                            instance.last_error = waiting
                            service.notify()
                        # Either the dependency changes, or we are told to stop.
                        async with anyio.create_task_group() as race:
                            race.start_soon(_wait_then_cancel, dependency.changed, race.cancel_scope)
                            race.start_soon(_wait_then_cancel, instance.wakeup, race.cancel_scope)
                        if instance.wakeup.is_set():
                            instance.wakeup = anyio.Event()
            except TimeoutError:
                return self._fail(instance, f"timeout waiting for dependency {dependency.fqn}")
        if instance.last_error and instance.last_error.startswith("waiting for "):
            instance.last_error = None
        return True

    async def _wait_uses(self, instance: InstanceRuntime) -> bool:
        """For each ``uses``: the provider (any source) exists, accepts our secret, and
        is ready; then its variables and ports are ours. False (state set) if not."""
        service = instance.service
        injected: dict[str, str] = {}
        uses_ports: dict[str, dict[str, int]] = {}
        for use in service.config.uses:
            try:
                with anyio.fail_after(self.dependency_timeout):
                    provider = await self._wait_provider(instance, use)
            except TimeoutError:
                provider = self.exposes.get(use.name)
                return self._start_failed(
                    instance,
                    f"Unknown exposed service: {use.name}" if provider is None
                    else f"timeout waiting for exposed service {use.name!r} ({provider.fqn}) to be healthy",
                )
            except _Refused as refusal:
                return self._start_failed(instance, str(refusal))
            if provider is None:
                return False  # told to stop while waiting
            expose = provider.config.expose
            assert expose is not None
            ports = provider.instances[0].ports or provider.config.ports()
            injected.update(renamed_vars(use, provided_vars(expose, ports)))
            uses_ports[alias_of(use)] = ports
        instance.injected = injected
        instance.uses_ports = uses_ports
        return True

    async def _wait_provider(self, instance: InstanceRuntime, use: UsesSpec) -> ServiceRuntime | None:
        checked: ServiceRuntime | None = None
        while not instance.stopping:
            provider = self.exposes.get(use.name)
            if provider is not None and provider is not checked:
                await self._check_secret(provider, use)
                checked = provider
            if provider is not None and any(i.ready for i in provider.instances):
                return provider
            waiting = f"waiting for exposed service {use.name!r}" + (
                f" ({provider.fqn})" if provider is not None else "")
            if instance.last_error != waiting:
                instance.last_error = waiting
                instance.service.notify()
            if provider is None:
                if self._exposes_changed is None:
                    self._exposes_changed = anyio.Event()
                event = self._exposes_changed
            else:
                event = provider.changed
            async with anyio.create_task_group() as race:
                race.start_soon(_wait_then_cancel, event, race.cancel_scope)
                race.start_soon(_wait_then_cancel, instance.wakeup, race.cancel_scope)
            if instance.wakeup.is_set():
                instance.wakeup = anyio.Event()
        return None

    async def _check_secret(self, provider: ServiceRuntime, use: UsesSpec) -> None:
        expose = provider.config.expose
        assert expose is not None
        if expose.secret is None:
            return  # open to every source
        if use.secret is None:
            raise _Refused(f"Exposed service {use.name!r} requires a secret")
        stored = expose.secret
        if not await anyio.to_thread.run_sync(verify_secret, use.secret, stored):
            raise _Refused(f"Invalid secret for exposed service {use.name!r}")

    def _start_failed(self, instance: InstanceRuntime, message: str) -> bool:
        return self._fail(instance, f"cannot start {instance.fqn}: {message}")

    def _fail(self, instance: InstanceRuntime, message: str, given: Input = Input.START_FAILED) -> bool:
        """A start that cannot go on: why, in its log and its status. (Told to stop
        meanwhile, the stop is what it does: it ends stopped.)"""
        instance.last_error = message
        self._note(instance, message, LogLevel.ERROR)
        if not instance.stopping:
            self._apply(instance, given)
        instance.service.notify()
        return False

    async def _supervise(self, instance: InstanceRuntime, handle: ServiceHandle, *, fresh: bool) -> ExitStatus:
        """From spawn (or adoption) to exit."""
        service = instance.service
        post_up = fresh and bool(service.config.hooks.post_up)
        instance.handle = handle
        handle.notice = lambda message: self._note(instance, message, LogLevel.WARN)
        instance.last_error = None
        instance.started_at = datetime.now(UTC)
        instance.started_monotonic = time.monotonic()
        self._note(instance, f"started (pid {handle.pid})" if handle.pid else "started")
        self.app.bus.publish(
            ServiceStarted(fqn=instance.fqn, pid=handle.pid, container_id=handle.container_id)
        )
        # Record it for adoption after the other starts of this batch have spawned: the
        # record needs the process's start time, which the kernel gives once its exec is
        # done; by then it is. Running (a start's answer) once recorded.
        await anyio.lowlevel.checkpoint()
        self._record_process(instance, handle)
        if fresh and not instance.stopping:  # (an adopted one is running already)
            self._apply(instance, Input.SPAWNED_WITH_POST_UP if post_up else Input.SPAWNED)
        if service.config.healthchecks:
            inside = handle.exec_prefix()  # a container's checks run in it
            instance.health = HealthMonitor(
                instance.fqn,
                service.config.healthchecks,
                ports=instance.ports,
                env=self.hook_base_env if inside else self._health_env(instance),
                on_change=lambda healthy, message: self._health_changed(instance, healthy, message),
                exec_prefix=inside,
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
        await self.app.logs.drain(instance.fqn)  # not cut short by a cancel
        self.app.logs.unfollow(instance.fqn)
        self._forget_process(instance)
        return status

    async def _post_up(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """post-up hooks once the instance is ready (healthy, or running without checks);
        if they fail, the instance is rolled back: stopped, and left crashed with why."""
        service = instance.service
        while not instance.up:
            await service.changed.wait()
        outcome = await self._run_service_hooks(instance, "post-up", service.config.hooks.post_up)
        if instance.phase is not Phase.POST_UP:
            return  # told to stop meanwhile
        if outcome.ok:
            self._apply(instance, Input.POST_UP_DONE)
            if instance.healthy is False:  # it failed its checks while the hooks ran
                self._apply(instance, Input.UNHEALTHY)
            return
        instance.last_error = f"{outcome.message}; the instance was stopped"
        self._apply(instance, Input.POST_UP_FAILED)
        config = service.config
        await handle.stop(config.stop_signum(), config.stop_grace)

    async def _after_exit(self, instance: InstanceRuntime, status: ExitStatus) -> bool:
        """Publish the exit and apply the restart policy; True to run again."""
        ran_for = time.monotonic() - instance.started_monotonic
        instance.healthy = None
        if status.success:
            self._note(instance, f"{status.describe()}")
            self.app.bus.publish(ServiceExited(fqn=instance.fqn, exit_code=status.exit_code))
            self._apply(instance, Input.EXITED_OK)
        else:
            instance.last_error = status.describe()
            self._note(instance, status.describe(), LogLevel.ERROR)
            self.app.bus.publish(
                ServiceCrashed(
                    fqn=instance.fqn,
                    exit_code=status.exit_code,
                    signal=status.signal,
                    message=status.describe(),
                )
            )
            self._apply(instance, Input.EXITED_FAILED)
        return await self._maybe_restart(instance, status, ran_for)

    async def _maybe_restart(self, instance: InstanceRuntime, status: ExitStatus, ran_for: float) -> bool:
        """After an exit or a failed start (``status`` unknown then): True to run again
        (its phase is then waiting, or stopping when a stop came during the delay)."""
        service = instance.service
        policy = service.config.restart.policy
        if self.shutting_down:
            return False
        if policy == "never" or (policy == "on-failure" and status.success):
            return False
        if instance.backoff is None:
            defaults = self.app.settings.restart
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
        self.app.state_writer.queue(*_state_row(service))
        self.app.bus.publish(
            ServiceRestarting(fqn=instance.fqn, attempt=instance.backoff.attempt, delay=delay)
        )
        if delay > 0:
            self._apply(instance, Input.RETRY_LATER)
            self._note(instance, f"restarting in {delay:.2f} s (attempt {instance.backoff.attempt})")
            with anyio.move_on_after(delay):
                await instance.wakeup.wait()
            instance.wakeup = anyio.Event()
        if not instance.stopping:
            self._apply(instance, Input.WAIT)
        return True

    # --- adoption ---------------------------------------------------------------------

    async def resume(self) -> None:
        """At start-up: adopt what earlier daemons left running, start what should run.

        Instances beyond the current scale (a daemon killed in the middle of scaling
        down), and those of a service the user stopped (killed in the middle of that
        stop), are adopted and stopped, so no copy runs twice, unwanted or unsupervised.
        Processes started from an older configuration (hive.yaml edited while no daemon
        ran, a reload cut short) are replaced, as a reload would have."""
        recorded: dict[str, int] = {}
        for fqn, index in self._process_records:
            recorded[fqn] = max(recorded.get(fqn, 0), index + 1)
        # Stopped together at the end: the start takes one stop grace, not one per service.
        unwanted: list[tuple[InstanceRuntime, ServiceHandle]] = []
        outdated: list[tuple[InstanceRuntime, ServiceHandle]] = []
        for service in list(self.services.values()):
            service.grow(recorded.get(service.fqn, 0))
            wanted = service.wanted() if service.desired == "running" else []
            replaced: set[InstanceRuntime] = set()  # this service's, started once stopped
            for instance in service.instances:
                adopted, older = await self._adopt(instance)
                if adopted is None:
                    continue
                if instance not in wanted:
                    unwanted.append((instance, adopted))
                elif older:
                    outdated.append((instance, adopted))
                    replaced.add(instance)
                else:
                    self._adopted(instance, adopted)
            # The surplus leaves the service now; its processes are stopped below, before
            # the daemon answers anyone (a scale-up must not meet them half stopped).
            del service.instances[max(service.scale, 1) :]
            if service.desired == "running":
                for instance in service.wanted():
                    if instance not in replaced and not instance.live:
                        self._start_instance(instance)
        if unwanted or outdated:
            kept = await self._stop_adopted(unwanted, outdated)
            for instance, handle in outdated:
                if instance in kept:
                    self._adopted(instance, handle)
                else:
                    self._start_instance(instance)
        self._stop_orphans()

    def _adopted(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """Supervise a process an earlier daemon started."""
        self._apply(instance, Input.ADOPTED)
        self._spawn_task(instance, handle)

    async def _stop_adopted(
        self,
        unwanted: list[tuple[InstanceRuntime, ServiceHandle]],
        outdated: list[tuple[InstanceRuntime, ServiceHandle]],
    ) -> set[InstanceRuntime]:
        """Stop, together, adopted processes no one wants any more and those of an older
        configuration (never supervised: a stop must not race the start of their
        supervision). The outdated ones that would not stop: kept, and supervised as they
        are rather than run twice."""
        kept: set[InstanceRuntime] = set()

        async def stop(instance: InstanceRuntime, handle: ServiceHandle, replacing: bool) -> None:
            config = instance.service.config
            try:
                await handle.stop(config.stop_signum(), config.stop_grace)
            except RunnerError as exc:
                if replacing:
                    log.warning("cannot replace %s: %s; adopting it as it is", instance.fqn, exc)
                    instance.config_digest = _config_digest(instance.service)
                    kept.add(instance)
                    return
                log.error("cannot stop %s: %s", instance.fqn, exc)
            self.app.logs.unfollow(instance.fqn)
            self._forget_process(instance)
            if not replacing:
                self._note(instance, "stopped: not wanted (its stop or scale-down was cut short)")

        async with anyio.create_task_group() as stops:
            for instance, handle in unwanted:
                stops.start_soon(stop, instance, handle, False)
            for instance, handle in outdated:
                stops.start_soon(stop, instance, handle, True)
        return kept

    def _stop_orphans(self) -> None:
        """Processes recorded for services that no longer exist (removed by a reload, or
        with their source, by a daemon killed before it stopped them) are stopped, in the
        background: nothing runs unsupervised. The processes of a source that failed to
        load are left alone (its services are not known, they may still be wanted)."""
        sources = self.app.sources.sources
        for (fqn, index), record in list(self._process_records.items()):
            source = sources.get(fqn.partition(":")[0])
            if fqn in self.services:
                continue
            if source is None or source.error is not None or source.warnings:
                # Its source is not loaded, or not all of it: the service may still be
                # wanted (a default hive.yaml missing at boot, an entry a newer Hive
                # refuses). Left running, and said so.
                log.warning("%s (pid %s) is not a known service; left running", fqn, record.get("pid"))
                continue
            del self._process_records[(fqn, index)]
            self._tasks.start_soon(self._stop_orphan, fqn, index, record)

    async def _stop_orphan(self, fqn: str, index: int, record: dict[str, Any]) -> None:
        name = fqn if index == 0 else f"{fqn}#{index}"
        found = record["handle"].get("container_id") or record["handle"].get("pid")
        try:
            if await self.runners.get(record["runner"]).stop_orphan(name, record["handle"], _ORPHAN_GRACE):
                log.warning("stopped %s (%s): its service no longer exists", name, found)
        except (RunnerError, UnknownRunner) as exc:
            # The record stays: the next start tries again (its engine may be back).
            log.warning("cannot stop %s (%s), whose service no longer exists: %s", name, found, exc)
            return
        self.app.state_writer.queue(
            ("processes", name), "DELETE FROM processes WHERE fqn = ? AND instance = ?", (fqn, index)
        )

    async def _adopt(self, instance: InstanceRuntime) -> tuple[ServiceHandle | None, bool]:
        """The instance's process left by an earlier daemon, if it still runs, and whether
        it was started from an older configuration (then to be replaced)."""
        service = instance.service
        record = self._process_records.pop((service.fqn, instance.index), None)
        try:
            runner = self.runners.get(service.config.runner.type)
        except UnknownRunner:
            return None, False
        if record is not None:
            # The ports it was started with (the daemon picked them, for instances > 0).
            instance.ports = dict(record["handle"].get("ports") or {})
        try:
            spec = self._run_spec(instance)
        except RuntimeTemplateError:
            return None, False
        handle: ServiceHandle | None = None
        offsets = (0, 0)
        if record is not None and record["runner"] == runner.name:
            stored = record["handle"]
            saved = stored.get("log_offsets") or (0, 0)
            offsets = (int(saved[0]), int(saved[1]))
            try:
                handle = await runner.adopt(spec, stored)
            except RunnerError as exc:
                log.warning("cannot adopt %s: %s", instance.fqn, exc)
        if handle is None:
            try:
                for found in await runner.discover(spec, self.base_env[MARKER_ENV]):
                    handle = await runner.adopt(spec, found)
                    if handle is not None:
                        break
            except RunnerError as exc:  # its engine is not up yet (boot order): start afresh
                log.warning("cannot look for a running %s: %s", instance.fqn, exc)
        if handle is None:
            if record is not None:
                self._forget_process(instance)
            return None, False
        current = _config_digest(service)
        recorded = str(record["handle"].get("config_digest") or "") if record is not None else ""
        # Started from a configuration changed since (a reload cut short by a kill,
        # hive.yaml edited while no daemon ran)? Digests of two Hive versions may differ
        # for one configuration: not compared.
        older = bool(recorded) and recorded != current and recorded.partition("/")[0] == __version__
        # Followed either way: what it writes until it is stopped is read too.
        self.app.logs.follow(instance.fqn, offsets=offsets)
        if older:  # stopped, then started again if wanted (resume)
            log.info("%s (pid %s) runs an older configuration", instance.fqn, handle.pid)
            self._note(instance, f"pid {handle.pid} runs an older configuration: it is stopped")
        else:
            instance.config_digest = current
            log.info("adopted %s (pid %s)", instance.fqn, handle.pid)
            self._note(instance, f"adopted by the daemon (pid {handle.pid})")
        return handle, older

    def _record_process(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        record = handle.record()
        offsets = self.app.logs.offsets(instance.fqn)
        self._saved_offsets[instance.fqn] = offsets
        record["log_offsets"] = list(offsets)
        record["ports"] = instance.ports
        record["config_digest"] = instance.config_digest
        self.app.state_writer.queue(
            ("processes", instance.fqn),
            "INSERT OR REPLACE INTO processes (fqn, instance, runner, pid, start_time, handle, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                instance.service.fqn,
                instance.index,
                instance.service.config.runner.type,
                handle.pid,
                record.get("start_time"),
                msgspec.json.encode(record).decode(),
                time.time(),
            ),
        )

    def _forget_process(self, instance: InstanceRuntime) -> None:
        self.app.state_writer.queue(
            ("processes", instance.fqn),
            "DELETE FROM processes WHERE fqn = ? AND instance = ?",
            (instance.service.fqn, instance.index),
        )

    def save_log_offsets(self) -> None:
        """Persist how far each running instance's output was read (for the next daemon)."""
        for instance in self.all_records():
            if instance.handle is None:
                continue
            offsets = self.app.logs.offsets(instance.fqn)
            if self._saved_offsets.get(instance.fqn) != offsets:
                self._record_process(instance, instance.handle)

    async def shutdown(self, *, keep_services: bool) -> None:
        """Stop every service (dependents first), or leave them running for the next
        daemon. The desired states stay as they are: the next daemon starts them again."""
        self.shutting_down = True
        if keep_services:
            self.save_log_offsets()
            await self.app.state_writer.flush()
            return
        running = [s for s in self.services.values() if any(i.live for i in s.instances)]
        for level in _reverse_levels(running):
            jobs = [service.owner.submit(JobKind.STOP, "halt") for service in level
                    if service.owner is not None and not service.owner.closed]
            for job in jobs:
                # Not waited for: an engine that is away must not hold the daemon's exit;
                # what it runs keeps its record, and the next daemon adopts it or stops it.
                result: JobResult = await job.wait()
                for instance, why in result.left:
                    log.warning("not stopped: %s: %s; the next daemon takes it over", instance.fqn, why)
        await self.app.state_writer.flush()

    # --- phases, health, notes ------------------------------------------------------------

    def _apply(self, instance: InstanceRuntime, given: Input) -> Phase:
        """The one place an instance's phase changes: by the table (machine.TRANSITIONS)."""
        phase = next_phase(instance.phase, given)
        if phase is not instance.phase:
            self._force(instance, phase)
        else:
            instance.service.notify()
        return phase

    def _force(self, instance: InstanceRuntime, phase: Phase) -> None:
        """Set the phase (by the table, or when the instance's task ends unexpectedly)."""
        previous, instance.phase = instance.phase, phase
        if phase in SETTLED:
            instance.settles += 1
            instance.settled_as = phase
        state, before = WIRE_STATE[phase], WIRE_STATE[previous]
        if state != before:
            self.app.bus.publish(ServiceStateChanged(fqn=instance.fqn, state=state, previous=before))
        instance.service.notify()

    def _health_env(self, instance: InstanceRuntime) -> dict[str, str]:
        """The environment of cmd health checks: the service's own (built again rather
        than kept per instance for the instance's whole life)."""
        try:
            return self._environment(instance)
        except RuntimeTemplateError:
            return self.base_env

    def _health_changed(self, instance: InstanceRuntime, healthy: bool, message: str) -> None:
        if instance.healthy == healthy:
            return
        instance.healthy = healthy
        self.app.bus.publish(ServiceHealthChanged(fqn=instance.fqn, healthy=healthy, message=message))
        self._note(instance, f"health: {'healthy' if healthy else 'unhealthy'} ({message})",
                   LogLevel.INFO if healthy else LogLevel.WARN)
        self._apply(instance, Input.HEALTHY if healthy else Input.UNHEALTHY)

    def _note(self, instance: InstanceRuntime, message: str, level: LogLevel = LogLevel.INFO) -> None:
        self.app.logs.note(instance.fqn, message, level=level)

    def info(self, instance: InstanceRuntime) -> ServiceInfo:
        """What the daemon shows of ``instance``; built again only after something it
        shows changed (status of many services is asked far more often than they change)."""
        health_version = instance.health.results_version if instance.health else 0
        cached = instance.info_cache
        if cached is not None and cached[0] == health_version:
            return cached[1]
        service = instance.service
        handle = instance.handle
        info = ServiceInfo(
            fqn=instance.fqn,
            source=service.source,
            name=service.name,
            state=str(instance.state),
            healthy=instance.healthy,
            pid=handle.pid if handle else None,
            container_id=handle.container_id if handle else None,
            started_at=instance.started_at if handle else None,
            ports=dict(instance.ports or service.config.ports()),
            restart_count=service.restart_count,
            instance=instance.index if service.scale > 1 or instance.index > 0 else None,
            runner=service.config.runner.type,
            desired=service.desired,
            exit_code=instance.exit_code,
            last_error=instance.last_error,
            health_checks=instance.health.results() if instance.health else [],
            instances=service.scale,
        )
        instance.info_cache = (health_version, info)
        return info


def _render_config(value: Any, instance: InstanceRuntime) -> Any:
    """A runner block with its runtime templates resolved (``"{{runtime.port.http}}:80"``)."""
    if isinstance(value, str):
        return render_runtime(value, ports=instance.ports, uses=instance.uses_ports) if "{{" in value else value
    if isinstance(value, dict):
        return {key: _render_config(item, instance) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_config(item, instance) for item in value]
    return value


def _config_digest(service: ServiceRuntime) -> str:
    """A short name of the service's effective configuration: ``<hive version>/<hash>``."""
    return f"{__version__}/{hashlib.sha256(service.fingerprint).hexdigest()[:16]}"



def _judge(instance: InstanceRuntime, seen: int | None) -> InstanceOutcome:
    """The outcome of a start (restart, scale up) for ``instance`` as it is now: ``seen``,
    its settle count when the start acted (None: nothing was waited for)."""
    phase = instance.phase
    if seen is not None and instance.settles > seen and phase not in SETTLED and instance.settled_as:
        phase = instance.settled_as  # between two runs of a restart loop: how the last ended
    state = str(WIRE_STATE[phase])
    reason = instance.last_error
    if phase in READY or (phase is Phase.EXITED and instance.exit_code == 0):
        return InstanceOutcome(fqn=instance.fqn, result="done", state=state)
    if phase is Phase.STOPPED:
        return InstanceOutcome(fqn=instance.fqn, result="failed", state=state, reason="stopped by a later command")
    if phase is Phase.STOPPING_TO_START:
        why = reason or "its stop waits for its runner"
        return InstanceOutcome(fqn=instance.fqn, result="pending", state=state,
                               reason=f"still stopping ({why}); it starts again once stopped")
    if phase is Phase.POST_UP:
        return InstanceOutcome(fqn=instance.fqn, result="pending", state=state,
                               reason="its post-up hooks not run yet (they wait for it to be healthy)")
    if phase in (Phase.WAITING, Phase.STARTING):
        return InstanceOutcome(fqn=instance.fqn, result="pending", state=state,
                               reason=reason or "still starting")
    if phase in (Phase.STOPPING, Phase.FAILING):
        return InstanceOutcome(fqn=instance.fqn, result="pending", state=state, reason=reason)
    return InstanceOutcome(fqn=instance.fqn, result="failed", state=state, reason=reason)


def _pending(instance: InstanceRuntime, why: str) -> InstanceOutcome:
    return InstanceOutcome(fqn=instance.fqn, result="pending", state=str(instance.state), reason=why)


class _Refused(Exception):
    """A used service will not have us (a missing or wrong secret)."""


def _free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _dependencies(service: ServiceRuntime) -> list[str]:
    return [f"{service.source}:{name}" for name in service.config.depends_on]


def _reverse_levels(services: Sequence[ServiceRuntime]) -> list[list[ServiceRuntime]]:
    """Stop order: a service goes before (in an earlier level than) what it depends on."""
    by_fqn = {s.fqn: s for s in services}
    dependents: dict[str, list[str]] = {fqn: [] for fqn in by_fqn}
    for service in services:
        for name in service.config.depends_on:
            dependency = f"{service.source}:{name}"
            if dependency in dependents:
                dependents[dependency].append(service.fqn)
    depth: dict[str, int] = {}

    def level_of(fqn: str, trail: frozenset[str]) -> int:
        # Depth 0: nothing being stopped depends on it; a dependency sits one level later.
        if fqn not in depth:
            depth[fqn] = max(
                (level_of(d, trail | {fqn}) + 1 for d in dependents[fqn] if d not in trail),
                default=0,
            )
        return depth[fqn]

    levels: dict[int, list[ServiceRuntime]] = {}
    for fqn, service in by_fqn.items():
        levels.setdefault(level_of(fqn, frozenset()), []).append(service)
    return [levels[key] for key in sorted(levels)]


def _port_in_use(ports: dict[str, int]) -> tuple[int, str] | None:
    """The first configured port something else already listens on."""
    for name, port in ports.items():
        if port <= 0:
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR: a TIME_WAIT left by our own previous run is not a conflict, a listener is.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return port, name
        finally:
            probe.close()
    return None

