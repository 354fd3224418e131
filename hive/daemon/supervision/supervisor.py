"""The supervisor: commands on services, run as jobs, answered with outcomes.

:class:`Supervisor` is the facade the rest of the daemon talks to. It keeps the
services (:class:`~.registry.Registry`), turns each command (start, stop, restart,
scale, remove, replace) into a job that the service's :class:`~.jobs.Owner` runs one at
a time, and waits for the outcome (:mod:`.outcomes`) outside the owner, with the
caller's deadline. What the user asked for (started, stopped, the scale) is persisted
before the first process exists; a commanded stop is never counted as a crash and
never restarted.

The work is done by collaborators, each given exactly what it needs:

- :class:`~.actions.Actions`: what each job does to its service;
- :class:`~.phases.Phases`: the one place an instance's phase changes;
- :class:`~.launch.Launcher`: run specs, environments, ports, hooks and builds;
- :class:`~.dependencies.Dependencies`: waits for ``depends_on`` and ``uses``;
- :class:`~.instance_task.InstanceTasks`: one task per live instance;
- :class:`~.stopping.Stopper`: stopping instances together, by runner;
- :class:`~.records.Records`: desired states and process records on disk;
- :class:`~.adoption.Adoption`: taking over what earlier daemons left running;
- :func:`~.status.instance_info`: the status view.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from hive.config import HiveConfig, ServiceConfig
from hive_client import ErrorCode, InstanceOutcome, ServiceInfo
from runners.base import RunnerError

from ..errors import RequestError
from ..runner_registry import RunnerRegistry, UnknownRunner
from .actions import Actions
from .adoption import Adoption
from .dependencies import Dependencies
from .instance_task import InstanceTasks
from .jobs import Job, JobKind, Owner, OwnerClosed
from .launch import Launcher
from .order import closure, dependencies_of, reverse_levels
from .outcomes import JobResult, Launched, done, judge, pending, superseded
from .phases import Phases
from .records import Records
from .registry import Registry
from .rollout import Rollouts, Traffic
from .runtime import InstanceRuntime, ServiceRuntime
from .status import instance_info
from .stopping import Stopper

if TYPE_CHECKING:
    from ..events import EventBus
    from ..hooks import ContainerStepRunner
    from ..logs import LogHub
    from ..settings import DaemonSettings
    from ..store import StateStore, StateWriter

__all__ = ["SourceChange", "Supervisor"]

log = logging.getLogger("hive.supervisor")
# How long a reload waits for a runner to tell whether an instance runs its current image.
OUTDATED_TIMEOUT = 10.0

# How long a start, restart or scale waits for its instances to settle before answering.
SETTLE_TIMEOUT = 30.0
MAX_INSTANCES = 1000


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


class Supervisor:
    def __init__(
        self, *, tasks: anyio.abc.TaskGroup, runners: RunnerRegistry, bus: EventBus, logs: LogHub,
        store: StateStore, writer: StateWriter, home: Path, settings: Callable[[], DaemonSettings],
    ) -> None:
        """``tasks``: the daemon's task group (owners and instances run in it); ``home``:
        HIVE_HOME; ``settings``: config.toml's settings as they are now (read at each
        restart and dependency wait: a reload replaces them)."""
        self._tasks = tasks
        self.runners = runners
        self._writer = writer
        self._registry = Registry()
        self._phases = Phases(bus, logs)
        self._launcher = Launcher(logs, runners, home)
        self._dependencies = Dependencies(
            self._registry, self._phases, timeout=lambda: settings().daemon.dependency_timeout)
        self._records = Records(store, writer, logs)
        self._stopper = Stopper(runners, self._phases, self._launcher)
        self._instances = InstanceTasks(
            tasks=tasks, runners=runners, registry=self._registry, phases=self._phases,
            launcher=self._launcher, dependencies=self._dependencies, stopper=self._stopper,
            records=self._records, bus=bus, logs=logs, restart_defaults=lambda: settings().restart,
        )
        rollouts = Rollouts(registry=self._registry, instances=self._instances, stopper=self._stopper,
                            phases=self._phases, records=self._records, bus=bus, traffic=lambda: self.traffic)
        self._actions = Actions(
            registry=self._registry, instances=self._instances, stopper=self._stopper, records=self._records,
            writer=writer, logs=logs, rollouts=rollouts,
        )
        self._adoption = Adoption(
            tasks=tasks, runners=runners, registry=self._registry, phases=self._phases,
            launcher=self._launcher, records=self._records, instances=self._instances, logs=logs,
        )
        # How long a start waits for its instances to settle (dependency_timeout: for a dependency).
        self.settle_timeout = SETTLE_TIMEOUT
        # What the proxy has in flight to instances (set once it exists): a blue-green
        # drain ends when the old generation has nothing left.
        self.traffic: Traffic | None = None

    # --- what the rest of the daemon reads ------------------------------------------------

    @property
    def services(self) -> dict[str, ServiceRuntime]:
        return self._registry.services

    @property
    def exposes(self) -> dict[str, ServiceRuntime]:
        """expose name -> the service that provides it."""
        return self._registry.exposes

    @property
    def shutting_down(self) -> bool:
        return self._registry.shutting_down

    @property
    def hook_base_env(self) -> dict[str, str]:
        """The daemon's environment without the marker: what hooks start from."""
        return self._launcher.hook_base_env

    @property
    def dependency_timeout(self) -> float:
        """How long a start waits for a dependency (or a used service) to become ready."""
        return self._dependencies.timeout

    @dependency_timeout.setter
    def dependency_timeout(self, seconds: float) -> None:
        self._dependencies.timeout_of = lambda: seconds

    def get(self, fqn: str) -> ServiceRuntime:
        return self._registry.get(fqn)

    def find_instance(self, fqn: str) -> InstanceRuntime | None:
        return self._registry.find_instance(fqn)

    def all_records(self) -> list[InstanceRuntime]:
        return self._registry.all_records()

    def in_order(self, source: str | None = None) -> list[InstanceRuntime]:
        return self._registry.in_order(source)

    def fingerprint(self, fqn: str) -> bytes | None:
        """The fingerprint of the configuration service ``fqn`` runs with; None if unknown."""
        service = self.services.get(fqn)
        return service.fingerprint if service is not None else None

    async def outdated(self, fqn: str) -> str | None:
        """Why a running instance of ``fqn`` no longer runs what its configuration names,
        through what hive.yaml does not say (an edited compose file, an image rebuilt
        under its tag); None if none does. A runner that cannot tell (the engine away)
        says nothing: the reload then keeps the service as it is."""
        service = self.services.get(fqn)
        for instance in service.instances if service is not None else []:
            handle = instance.handle
            if handle is None:
                continue
            reason = None
            try:
                with anyio.move_on_after(OUTDATED_TIMEOUT):  # a reload must not hang on an engine
                    reason = await handle.outdated()
            except RunnerError as exc:
                log.info("%s: cannot tell whether it runs its current image or file: %s", fqn, exc)
                continue
            if reason is not None:
                return reason
        return None

    def any_live(self, fqns: Iterable[str]) -> bool:
        """Whether any instance of these services (those known) is live."""
        services = self.services
        return any(i.live for fqn in fqns if (s := services.get(fqn)) is not None for i in s.instances)

    def wanted_running(self, fqns: Iterable[str]) -> bool:
        """Whether any of these services (those known) is wanted running."""
        services = self.services
        return any(s.desired == "running" for fqn in fqns if (s := services.get(fqn)) is not None)

    def expose_owner(self, name: str) -> str | None:
        """The fqn of the service that exposes ``name``, if one does."""
        provider = self.exposes.get(name)
        return provider.fqn if provider is not None else None

    def info(self, instance: InstanceRuntime) -> ServiceInfo:
        return instance_info(instance)

    def container_steps(self, fqn: str) -> ContainerStepRunner:
        return self._launcher.container_steps(fqn)

    # --- registry ---------------------------------------------------------------------

    async def load_persisted(self) -> None:
        """Read desired states and process records written by earlier daemons."""
        await self._records.load()

    def register(
        self, source: str, config: ServiceConfig, project: HiveConfig | None, fingerprint: bytes
    ) -> ServiceRuntime:
        # Load its runner now (an import, the first time), not on the path of its start.
        with contextlib.suppress(UnknownRunner):
            self.runners.get(config.runner.type)
        service = ServiceRuntime(source, config, project, fingerprint)
        service.owner = Owner(service.fqn, self._tasks, partial(self._actions.run, service))
        persisted = self._records.persisted.get(service.fqn)
        if persisted is not None:
            service.desired = persisted.desired
            service.restart_count = persisted.restart_count
            service.scale = persisted.instances
            service.grow(service.scale)
        else:  # stored at once, so the next daemon knows it was known (see settle_loaded)
            self._records.save_desired(service)
        self.services[service.fqn] = service
        self._registry.index_exposes()
        return service

    def settle_loaded(self, source: str, fqns: list[str], *, enabled: bool, complete: bool,
                      start_added: bool = True) -> None:
        """At start-up, before :meth:`resume`: the services of ``source`` as its file says
        now, made what a reload would have made them. The file may have changed while no
        daemon ran, or under a reload a ``kill -9`` cut short. Services the stored state does
        not know are new: wanted running when the source was (``enabled`` and one of its
        services wanted running), as a reload starts what it adds; the stored states of
        services the file no longer lists are forgotten (when it loaded ``complete``ly),
        as a reload forgets what it removes. Changed ones are replaced by resume() (their
        configuration digest differs). ``start_added`` False: the stored state predates
        rows for every service, so a service without one may only never have run."""
        prefix = f"{source}:"
        stored = {fqn: row for fqn, row in self._records.persisted.items() if fqn.startswith(prefix)}
        added = [self.services[fqn] for fqn in fqns if fqn not in stored and fqn in self.services]
        owned = source in self._registry.source_owners  # its owner decides what starts
        if added and start_added and enabled and not owned and any(row.desired == "running" for row in stored.values()):
            log.info("starting %s: added to %s while no daemon ran", ", ".join(s.fqn for s in added), source)
            self._actions.mark_desired(added, "running")
        if complete:
            for fqn in set(stored) - set(fqns):
                self._records.forget_service(fqn)

    def set_source_owner(self, source: str, owner: str | None) -> None:
        """``owner`` (a plugin's name) decides which of the source's services run after a
        daemon restart: :meth:`resume` adopts what still runs and starts none of them.
        None: the daemon starts what was running."""
        if owner is None:
            self._registry.source_owners.pop(source, None)
        else:
            self._registry.source_owners[source] = owner

    async def unregister(self, fqn: str, *, forget: bool) -> list[InstanceOutcome]:
        """Stop the service and remove it; ``forget``: its stored state goes too."""
        service = self.services.get(fqn)
        if service is None:
            return []
        assert service.owner is not None
        job = service.owner.submit(JobKind.REMOVE, forget)
        service.owner.close()  # what comes after the removal finds no service
        result: JobResult = await job.wait()
        return [pending(instance, why) for instance, why in result.left]

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
        self._registry.index_exposes()
        for job in jobs:
            await job.wait()
        if change.start_added and change.added and not self.shutting_down:
            await self.start(list(change.added), wait=None)

    # --- commands --------------------------------------------------------------------

    def _closure(self, fqns: Iterable[str]) -> list[ServiceRuntime]:
        """The services and, transitively, what they depend on (same source)."""
        return closure([self.get(fqn) for fqn in fqns], self.services.get)

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
        services = self._closure(fqns)
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        self._actions.mark_desired(services, "running")  # saved in one go: see mark_desired
        jobs: list[tuple[ServiceRuntime, Job]] = []
        claimed: list[tuple[ServiceRuntime, Job]] = []
        for service in services:
            job = service.owner.claim(JobKind.START) if service.owner is not None else None
            if job is not None:
                claimed.append((service, job))
            else:
                jobs.append((service, self._submit(service, JobKind.START)))
        if claimed:
            self._tasks.start_soon(self._run_claimed, claimed, self._actions.start_together, name="start")
            jobs += claimed
        return await self._started(jobs, wait)

    async def restart(self, fqn: str) -> list[InstanceOutcome]:
        """Stop, then start (the service and what it depends on). A blue-green service
        that serves rolls out instead: a new generation, switched to once healthy."""
        service = self.get(fqn)
        jobs = [(service, self._submit(service, JobKind.ROLLOUT if service.blue_green else JobKind.RESTART))]
        jobs += [(dep, self._submit(dep, JobKind.START)) for dep in self._closure([fqn]) if dep is not service]
        return await self._started(jobs, self.settle_timeout)

    async def _started(self, jobs: list[tuple[ServiceRuntime, Job]], wait: float | None) -> list[InstanceOutcome]:
        launched: Launched = {}
        replaced: list[InstanceOutcome] = []
        for service, job in jobs:
            result: JobResult = await job.wait()
            if job.kind is JobKind.STOP:  # a stop came before it ran, and took its place
                replaced += [superseded(i, "a stop came before the start ran") for i in service.wanted()]
            launched.update(result.launched)
            replaced += result.answered
        return replaced + await self._outcomes(launched, wait)

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
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        # What the user asked for goes to disk once for the whole command, before any
        # signal (see mark_desired; one that a start overtook saves it again).
        self._actions.mark_desired(services, "stopped")
        outcomes: list[InstanceOutcome] = []
        # What a service left running depends on is kept up for it: fqn -> the services
        # it is kept for. It is stopped once they are (see _stop_when_released).
        held: dict[str, list[ServiceRuntime]] = {}
        for level in reverse_levels(services):
            jobs: list[tuple[ServiceRuntime, Job]] = []
            claimed: list[tuple[ServiceRuntime, Job]] = []
            for service in level:
                job = None if service.fqn in held or service.owner is None else service.owner.claim(JobKind.STOP)
                if job is not None:
                    claimed.append((service, job))
                elif service.fqn in held:
                    outcomes += [pending(i, "left running: a service that depends on it is not stopped yet; "
                                            "it stops once that one has") for i in service.instances if i.live]
                    for dependency in dependencies_of(service):
                        held.setdefault(dependency, []).append(service)
                    self._tasks.start_soon(self._stop_when_released, service, held[service.fqn])
                elif self.services.get(service.fqn) is not service or (service.owner and service.owner.closed):
                    # Removed while an earlier level stopped: its removal stops it.
                    outcomes += [pending(i, "being removed; the removal stops it") for i in service.instances
                                 if i.live]
                else:
                    jobs.append((service, self._submit(service, JobKind.STOP)))
            if claimed:
                self._tasks.start_soon(self._run_claimed, claimed, self._actions.stop_together, name="stop")
                jobs += claimed
            for service, job in jobs:
                result: JobResult = await job.wait()
                if job.kind is not JobKind.STOP:  # a start came before it ran, and took its place
                    outcomes += [superseded(i, "a start came before the stop ran")
                                 for i in service.instances if i.live]
                for instance, why in result.left:
                    outcomes.append(pending(instance, why))
                    for dependency in dependencies_of(instance.service):
                        held.setdefault(dependency, []).append(instance.service)
        answered = {outcome.fqn for outcome in outcomes}
        outcomes += [done(i) for s in services for i in s.instances if i.fqn not in answered]
        return outcomes

    async def _run_claimed(
        self, claimed: list[tuple[ServiceRuntime, Job]],
        together: Callable[[list[ServiceRuntime]], Awaitable[dict[ServiceRuntime, JobResult]]],
    ) -> None:
        """Run the jobs claimed from idle owners as one (:meth:`Actions.start_together`,
        :meth:`Actions.stop_together`): one save, one sweep, no task per service. In a
        task of the daemon's, as an owner's job runs (a caller that goes away does not
        cut it short); then each owner is handed back. Bench: bench/peers.py "cold start
        of 100" and "stop of 100"."""
        result: dict[ServiceRuntime, JobResult] = {}
        error: BaseException | None = None
        try:
            result = await together([service for service, _ in claimed])
        except Exception as exc:  # each caller gets it, as from an owner's job
            error = exc
        except BaseException:
            error = OwnerClosed("the daemon is shutting down")
            raise
        finally:
            for service, job in claimed:
                assert service.owner is not None
                if error is None:
                    service.owner.release(job, result[service])
                else:
                    service.owner.release(job, error=error)

    async def _stop_when_released(self, service: ServiceRuntime, holders: list[ServiceRuntime]) -> None:
        """A stop left ``service`` running for ``holders`` (they depend on it, and their own
        stop is owed: their engine is away). Once none of them runs, it is stopped too,
        unless someone asked for it again meanwhile. In the background: no request waits."""
        for holder in holders:
            while any(instance.live for instance in holder.instances):
                if service.desired != "stopped" or self._registry.gone(service):
                    return
                await holder.changed.wait()
        if service.desired == "stopped" and not self._registry.gone(service) and service.owner is not None \
                and not service.owner.closed:
            await service.owner.submit(JobKind.STOP).wait()

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
            await self._writer.flush()
        return [judge(instance, seen) for instance, seen in launched.items()]

    async def build(self, fqn: str) -> str:
        """Run a service's build now (``hive service build``); its output goes to the logs."""
        service = self.get(fqn)
        if service.config.build is None:
            raise RequestError.invalid(f"{service.fqn} has no build step")
        instance = service.instances[0]
        instance.ports = self._launcher.instance_ports(instance)
        result = await self._launcher.build(instance, force=True)
        assert result is not None
        if not result.ok:
            raise RequestError(ErrorCode.BUILD_FAILED, result.message)
        return f"{service.fqn} built"

    # --- start-up and shutdown ------------------------------------------------------------

    async def resume(self, source_loaded: Callable[[str], bool]) -> None:
        """At start-up: adopt what earlier daemons left running, start what should run
        (see :mod:`.adoption`). ``source_loaded(name)``: whether that source loaded
        completely (else the records of services it does not list are left alone)."""
        await self._adoption.resume(source_loaded)

    def save_log_offsets(self) -> None:
        """Persist how far each running instance's output was read (for the next daemon)."""
        self._records.save_log_offsets(self.all_records())

    async def shutdown(self, *, keep_services: bool) -> None:
        """Stop every service (dependents first), or leave them running for the next
        daemon. The desired states stay as they are: the next daemon starts them again."""
        self._registry.shutting_down = True
        if keep_services:
            self.save_log_offsets()
            await self._writer.flush()
            return
        running = [s for s in self.services.values() if any(i.live for i in s.instances)]
        for level in reverse_levels(running):
            jobs = [service.owner.submit(JobKind.STOP, "halt") for service in level
                    if service.owner is not None and not service.owner.closed]
            for job in jobs:
                # Not waited for: an engine that is away must not hold the daemon's exit;
                # what it runs keeps its record, and the next daemon adopts it or stops it.
                result: JobResult = await job.wait()
                for instance, why in result.left:
                    log.warning("not stopped: %s: %s; the next daemon takes it over", instance.fqn, why)
        await self._writer.flush()

    # --- for tests that drive health by hand ----------------------------------------------

    def _health_changed(self, instance: InstanceRuntime, healthy: bool, message: str) -> None:
        self._phases.health_changed(instance, healthy, message)
