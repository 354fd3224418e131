"""Service supervision: the state machine, restarts with backoff, dependency order.

Each instance of a service is driven by one task (:meth:`Supervisor._run_instance`):
spawn through its runner, await the runner's exit notification (no polling), then
decide by the restart policy. Commands (start, stop, restart) change the desired state,
which is persisted, and act on the instance; a commanded stop is never counted as a
crash and never restarted.

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
import random
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
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
    LogLevel,
    ServiceCrashed,
    ServiceExited,
    ServiceHealthChanged,
    ServiceInfo,
    ServiceRestarting,
    ServiceStarted,
    ServiceState,
    ServiceStateChanged,
    ServiceStopped,
    __version__,
)
from runners.base import ExitStatus, RunnerError, RunSpec, ServiceHandle, StopFailed

from .errors import RequestError
from .exposure import alias_of, provided_vars, renamed_vars, verify_secret
from .health import HealthMonitor
from .runner_registry import RunnerRegistry, UnknownRunner

if TYPE_CHECKING:
    from .app import App
    from .build import BuildResult
    from .hooks import ContainerStepRunner, HookOutcome, OutputSink

__all__ = ["Backoff", "InstanceRuntime", "ServiceRuntime", "Supervisor"]

log = logging.getLogger("hive.supervisor")

# How long a start waits for a dependency (or a used service) to become ready.
DEPENDENCY_TIMEOUT = 60.0
MAX_INSTANCES = 1000
# A process whose service is gone gets this long after SIGTERM (its own grace is gone too).
_ORPHAN_GRACE = 10.0
# A build that takes longer is cut off (and the start fails with its output).
BUILD_TIMEOUT = 3600.0
# The environment marker that lets a new daemon find services a killed one started
# but had not yet recorded.
MARKER_ENV = "HIVE_SUPERVISOR"
_READY_STATES = (ServiceState.RUNNING, ServiceState.UNHEALTHY)
_SETTLED_STATES = (
    ServiceState.RUNNING,
    ServiceState.UNHEALTHY,
    ServiceState.CRASHED,
    ServiceState.EXITED,
    ServiceState.PORT_CONFLICT,
    ServiceState.STOPPED,
    ServiceState.BACKOFF,
)


class Backoff:
    """Restart delays: ``delay`` doubling up to ``max_delay``, with jitter; a run of at
    least ``reset_after`` seconds starts the sequence over."""

    def __init__(self, delay: float, max_delay: float, reset_after: float, jitter: bool) -> None:
        self.delay = delay
        self.max_delay = max_delay
        self.reset_after = reset_after
        self.jitter = jitter
        self.attempt = 0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.reset_after:
            self.attempt = 0
        base = min(self.max_delay, self.delay * (2**self.attempt)) if self.delay > 0 else 0.0
        self.attempt += 1
        if self.jitter and base > 0:
            base = min(self.max_delay, base * random.uniform(0.9, 1.1))
        return base


# What a ServiceInfo shows of an instance and of its service: setting one of these
# drops the instance's cached info (status answers build it only after a change).
_SHOWN_OF_INSTANCE = frozenset(
    {"state", "healthy", "handle", "started_at", "ports", "exit_code", "last_error", "health"}
)
_SHOWN_OF_SERVICE = frozenset({"config", "desired", "scale", "restart_count"})


class InstanceRuntime:
    """One running copy of a service, and everything runtime-only about it."""

    # The last ServiceInfo built, with the health-results version it showed.
    info_cache: tuple[int, ServiceInfo] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHOWN_OF_INSTANCE:
            object.__setattr__(self, "info_cache", None)
        object.__setattr__(self, name, value)

    def __init__(self, service: ServiceRuntime, index: int) -> None:
        self.service = service
        self.index = index
        # ``source:service`` for the first instance (whatever the scale, so its name and
        # logs stay put), ``source:service#N`` for the others. Both parts are fixed.
        self.fqn = service.fqn if index == 0 else f"{service.fqn}#{index}"
        self.state = ServiceState.STOPPED
        self.handle: ServiceHandle | None = None
        self.recorded = False  # its process record is queued for the state store
        # Times it reached a settled state, and the last one: a start that waits for it to
        # settle is answered even when it never stays settled (a restart loop, delay 0).
        self.settles = 0
        self.settled_as: ServiceState | None = None
        self.started_at: datetime | None = None
        self.started_monotonic = 0.0
        self.exit_code: int | None = None
        self.last_error: str | None = None
        self.healthy: bool | None = None
        self.health: HealthMonitor | None = None
        self.ports: dict[str, int] = {}
        # What its last start got from the services it uses (for health checks, status).
        self.injected: dict[str, str] = {}
        self.uses_ports: dict[str, dict[str, int]] = {}
        self.stop_requested = False
        # Why it must not run after all (a failed post-up hook): ends crashed, not stopped.
        self.failure: str | None = None
        # Started, its post-up hooks not yet run to success.
        self.post_up_pending = False
        # The pre-up hooks and build of a start under way (a stop cancels them).
        self.preparing: anyio.CancelScope | None = None
        self.running_task = False
        # A start asked while a stop was under way: done when the stop is over.
        self.start_after_stop = False
        self._done: anyio.Event | None = None
        self.wakeup = anyio.Event()
        self.backoff: Backoff | None = None
        # The configuration its process was started from (see _config_digest), kept in
        # its process record: a later daemon does not adopt a process of an older one.
        self.config_digest = ""

    async def wait_finished(self) -> None:
        """Until its supervision task has ended (made only when someone waits)."""
        if not self.running_task:
            return
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    def finished(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done.set()

    @property
    def up(self) -> bool:
        """Running, and healthy if it has health checks."""
        if self.state not in _READY_STATES:
            return False
        return self.healthy is True if self.service.config.healthchecks else True

    @property
    def ready(self) -> bool:
        """Up, and its post-up hooks done: what dependents and users wait for."""
        return self.up and not self.post_up_pending


class ServiceRuntime:
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHOWN_OF_SERVICE:
            for instance in getattr(self, "instances", ()):
                instance.info_cache = None
        object.__setattr__(self, name, value)

    def __init__(
        self,
        source: str,
        config: ServiceConfig,
        project: HiveConfig | None,
        fingerprint: bytes,
    ) -> None:
        self.source = source
        self.name = config.name
        self.fqn = f"{source}:{config.name}"
        self.config = config
        self.project = project
        self.fingerprint = fingerprint
        self.desired = "stopped"
        self.scale = 1
        self.restart_count = 0
        self.instances: list[InstanceRuntime] = [InstanceRuntime(self, 0)]
        self._changed: anyio.Event | None = None
        # One build for the instances that start together: the lock, and a counter of
        # the builds that succeeded (a start that waited for one does not build again).
        self.build_lock = anyio.Lock()
        self.builds = 0

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change of one of its instances (made only when someone waits)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def wanted(self) -> list[InstanceRuntime]:
        """The instances the scale asks for."""
        return self.instances[: self.scale]

    def grow(self, count: int) -> None:
        while len(self.instances) < count:
            self.instances.append(InstanceRuntime(self, len(self.instances)))


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

    async def unregister(self, fqn: str, *, forget: bool) -> None:
        service = self.services.get(fqn)
        if service is None:
            return
        await self.stop([fqn], persist=not forget)
        del self.services[fqn]
        self._index_exposes()
        if forget:
            self.app.state_writer.queue(("services", fqn), "DELETE FROM services WHERE fqn = ?", (fqn,))
            self._persisted.pop(fqn, None)
            for instance in service.instances:
                self.app.logs.forget(instance.fqn)

    def update_config(
        self, fqn: str, config: ServiceConfig, project: HiveConfig | None, fingerprint: bytes
    ) -> None:
        service = self.services[fqn]
        service.config = config
        service.project = project
        service.fingerprint = fingerprint
        self._index_exposes()

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

    async def start(self, fqns: Iterable[str], *, wait: float | None = 30.0) -> list[str]:
        """Start services (and their dependencies); returns problems seen while waiting."""
        if self.shutting_down:
            raise RequestError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down")
        services = self._closure(fqns)
        for service in services:
            service.desired = "running"
            self.app.state_writer.queue(*_state_row(service))
        # What the user asked for is on disk before the first process exists: a daemon
        # killed in between leaves either nothing started or everything wanted (the
        # next one then starts the rest, and stops what runs unwanted).
        await self.app.state_writer.flush()
        for service in services:
            # What happened during the flush: a stop, a delete, the daemon shutting down.
            if self.shutting_down or service.desired != "running" or self.services.get(service.fqn) is not service:
                continue
            for instance in service.wanted():
                self._launch(instance, None)
        if wait is None:
            return []
        # One whose stop waits for its engine starts when that stop is over: not waited for.
        later = [i for s in services for i in s.instances if i.start_after_stop]
        problems = [f"{i.fqn}: still stopping (its stop waits for its runner); it starts again once stopped"
                    for i in later]
        waiting = [s for s in services if not any(i.start_after_stop for i in s.instances)]
        return problems + await self._wait_settled(waiting, wait)

    async def scale(self, fqn: str, count: int) -> list[str]:
        """Run ``count`` copies; down: the highest instances stop first. Persisted."""
        service = self.get(fqn)
        if not 0 <= count <= MAX_INSTANCES:
            raise RequestError.invalid(f"instances must be between 0 and {MAX_INSTANCES}, not {count}")
        previous, service.scale = service.scale, count
        self.app.state_writer.queue(*_state_row(service))
        await self.app.state_writer.flush()
        service.grow(count)
        if count < previous:
            leaving = sorted(service.instances[count:], key=lambda i: i.index, reverse=True)
            await self._stop_level(leaving)
            del service.instances[max(count, 1) :]
            service.notify()
            return []
        if service.desired != "running":
            service.notify()
            return []
        for instance in service.wanted():
            self._launch(instance, None)
        return await self._wait_settled([service], 30.0)

    def _launch(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
        if instance.running_task:
            if instance.stop_requested:
                # Its stop is under way, or waits for its engine: start it once it is over.
                instance.start_after_stop = True
            return
        instance.running_task = True
        instance.stop_requested = False
        instance.wakeup = anyio.Event()
        self._tasks.start_soon(self._run_instance, instance, adopted)

    async def _wait_settled(self, services: Sequence[ServiceRuntime], timeout: float) -> list[str]:
        problems: list[str] = []
        seen = {i: i.settles for service in services for i in service.wanted()}

        def settled(instance: InstanceRuntime) -> bool:
            return _settled(instance) or instance.settles > seen.get(instance, 0)

        with anyio.move_on_after(timeout):
            for service in services:
                while not all(settled(i) for i in service.wanted()):
                    await service.changed.wait()
        # Their process records on disk too: a daemon killed right after the answer
        # adopts them with everything it knew (their ports, where their logs were).
        await self.app.state_writer.flush()
        for service in services:
            for instance in service.wanted():
                state = instance.state
                if not _settled(instance) and instance.settled_as is not None:
                    state = instance.settled_as  # between two runs of a restart loop
                if state in _READY_STATES and instance.post_up_pending:
                    problems.append(f"{instance.fqn}: {state}, its post-up hooks not run yet "
                                    "(they wait for it to be healthy)")
                elif state not in _READY_STATES:
                    problems.append(f"{instance.fqn}: {state}" + (
                        f" ({instance.last_error})" if instance.last_error else ""))
        return problems

    async def stop(self, fqns: Iterable[str], *, persist: bool = True, patient: bool = True) -> list[str]:
        """Stop services, dependents first (among those being stopped), each level in parallel.

        An instance its runner cannot stop now (its engine is away) is waited for; or, not
        ``patient``, left stopping (its runner carries the stop out when it can) and named
        in the problems returned, "fqn: why".
        """
        services = [self.get(fqn) for fqn in fqns]
        for service in services:
            if persist:
                service.desired = "stopped"
                self.app.state_writer.queue(*_state_row(service))
        if persist:
            await self.app.state_writer.flush()
        problems: list[str] = []
        held: set[str] = set()  # what a service left running depends on: kept up for it
        for level in _reverse_levels(services):
            stopping = []
            for service in level:
                if service.fqn in held:
                    problems.append(f"{service.fqn}: left running: a service that depends on it is not stopped yet")
                    held.update(_dependencies(service))
                else:
                    stopping.append(service)
            for instance, why in await self._stop_level([i for s in stopping for i in s.instances], patient):
                problems.append(f"{instance.fqn}: {why}")
                held.update(_dependencies(instance.service))
        return problems

    async def restart(self, fqn: str) -> list[str]:
        """Stop, then start. Instances whose stop cannot be sent now (see stop()) start
        again once it is over; they are the problems returned."""
        service = self.get(fqn)
        problems = await self.stop([fqn], persist=False, patient=False)
        if problems:
            await self.start([service.fqn], wait=None)  # those still stopping: once stopped
            return problems
        await self.start([service.fqn])
        return []

    async def _stop_level(
        self, instances: list[InstanceRuntime], patient: bool = True
    ) -> list[tuple[InstanceRuntime, str]]:
        """Stop instances together: their runners stop all of theirs in one sweep. Those
        not stopped now and why, when not ``patient`` (see stop())."""
        groups: dict[tuple[str, int, float], list[ServiceHandle]] = {}
        stopping = [i for i in instances if i.running_task]
        for instance in stopping:
            instance.stop_requested = True
            instance.start_after_stop = False
            instance.wakeup.set()  # out of a backoff or a wait for its dependencies
            if instance.preparing is not None:
                instance.preparing.cancel()  # its pre-up hooks or build
        # pre-down hooks, before the signal; a failing one never blocks the stop.
        with_hooks = [i for i in stopping if i.handle is not None and i.service.config.hooks.pre_down]
        if with_hooks:
            async with anyio.create_task_group() as hooks:
                for instance in with_hooks:
                    hooks.start_soon(self._down_hooks, instance, "pre-down")
        for instance in stopping:
            handle = instance.handle
            if handle is not None:
                self._set_state(instance, ServiceState.STOPPING)
                config = instance.service.config
                key = (config.runner.type, config.stop_signum(), config.stop_grace)
                groups.setdefault(key, []).append(handle)
        failed: dict[int, str] = {}  # id(handle) -> why its stop failed
        async with anyio.create_task_group() as stops:
            for (runner_name, stop_signal, grace), handles in groups.items():
                stops.start_soon(self._stop_handles, runner_name, handles, stop_signal, grace, failed)
        left: list[tuple[InstanceRuntime, str]] = []
        for instance in instances:
            why = failed.get(id(instance.handle)) if instance.handle is not None else None
            if why is not None:
                self._note(instance, f"not stopped yet: {why}", LogLevel.WARN)
                if not patient:
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

    async def _stop_handles(
        self, runner_name: str, handles: list[ServiceHandle], stop_signal: int, grace: float,
        failed: dict[int, str],
    ) -> None:
        """Stop ``handles`` through their runner; why each one that was not stopped was
        not goes into ``failed``."""
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

    # --- the supervision loop -----------------------------------------------------------

    async def _run_instance(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> None:
        service = instance.service
        handle = adopted
        ran = False  # a process ran in this round (post-down hooks then apply)
        fresh = adopted is None  # an adopted process had its post-up hooks already
        instance.failure = None
        try:
            while not instance.stop_requested:
                if handle is None:
                    handle = await self._spawn(instance)
                    if handle is None:
                        if await self._after_failure(instance, ExitStatus(exit_code=None)):
                            continue
                        break
                    if instance.stop_requested:
                        await handle.stop(service.config.stop_signum(), service.config.stop_grace)
                ran = True
                status = await self._supervise(instance, handle, fresh=fresh)
                handle = None
                fresh = True
                if instance.stop_requested:
                    break
                if not await self._after_exit(instance, status):
                    break
            if instance.stop_requested:
                instance.healthy = None
                if ran and service.config.hooks.post_down:
                    with anyio.CancelScope(shield=True):
                        await self._down_hooks(instance, "post-down")
                if instance.failure is not None:
                    instance.last_error = instance.failure
                    self._note(instance, instance.failure, LogLevel.ERROR)
                    self._set_state(instance, ServiceState.CRASHED)
                else:
                    self._note(instance, "stopped")
                    self.app.bus.publish(ServiceStopped(fqn=instance.fqn, exit_code=instance.exit_code))
                    self._set_state(instance, ServiceState.STOPPED)
        except Exception:
            log.exception("supervision of %s failed", instance.fqn)
            instance.last_error = "internal error in the supervisor; see the daemon log"
            self._set_state(instance, ServiceState.CRASHED)
        finally:
            instance.running_task = False
            instance.handle = None
            instance.finished()
            service.notify()
            if instance.start_after_stop:  # asked to start while its stop was under way
                instance.start_after_stop = False
                if service.desired == "running" and not self.shutting_down \
                        and self.services.get(service.fqn) is service and instance in service.wanted():
                    self._launch(instance, None)

    async def _spawn(self, instance: InstanceRuntime) -> ServiceHandle | None:
        """Start one instance; None (state and last_error set) if it could not."""
        service = instance.service
        config = service.config
        instance.exit_code = None
        if not await self._wait_dependencies(instance):
            return None
        if not await self._wait_uses(instance):
            return None
        if instance.stop_requested:
            return None
        self._set_state(instance, ServiceState.STARTING)
        try:
            runner = self.runners.get(config.runner.type)
            spec = self._run_spec(instance)
            if config.hooks.pre_up or config.build is not None:
                # pre-up hooks, then the build, then the runner (hive-yaml §13, §9).
                with anyio.CancelScope() as preparing:
                    instance.preparing = preparing
                    problem = await self._prepare_start(instance)
                instance.preparing = None
                if preparing.cancelled_caught or instance.stop_requested:
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
                instance.last_error = (
                    f"cannot start {instance.fqn}: port {port} ({name}) is already in use"
                )
                self._note(instance, instance.last_error, LogLevel.ERROR)
                self._set_state(instance, ServiceState.PORT_CONFLICT)
                return None
            instance.config_digest = _config_digest(service)
            handle = await runner.start(spec)
        except (RunnerError, UnknownRunner, RuntimeTemplateError) as exc:
            instance.last_error = f"cannot start {instance.fqn}: {exc}"
            self._note(instance, instance.last_error, LogLevel.ERROR)
            self._set_state(instance, ServiceState.CRASHED)
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
            from .build import build_needed, run_build  # only projects with builds pay for it

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
        from .hooks import HookOutcome, run_hooks  # only projects with hooks pay for it

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
                with anyio.fail_after(DEPENDENCY_TIMEOUT):
                    while not any(i.ready for i in dependency.instances):
                        if instance.stop_requested:
                            return False
                        failed = [
                            i for i in dependency.instances
                            if i.state in (ServiceState.CRASHED, ServiceState.EXITED,
                                           ServiceState.PORT_CONFLICT)
                            and not i.running_task
                        ]
                        if failed or dependency.desired != "running":
                            state = failed[0].state if failed else dependency.instances[0].state
                            instance.last_error = (
                                f"dependency {dependency.fqn} failed (state: {state}), "
                                f"cannot start {instance.fqn}"
                            )
                            self._note(instance, instance.last_error, LogLevel.ERROR)
                            self._set_state(instance, ServiceState.CRASHED)
                            return False
                        if instance.last_error != waiting:
                            instance.last_error = waiting
                        # Either the dependency changes, or we are told to stop.
                        async with anyio.create_task_group() as race:
                            race.start_soon(_wait_then_cancel, dependency.changed, race.cancel_scope)
                            race.start_soon(_wait_then_cancel, instance.wakeup, race.cancel_scope)
                        if instance.wakeup.is_set():
                            instance.wakeup = anyio.Event()
            except TimeoutError:
                instance.last_error = f"timeout waiting for dependency {dependency.fqn}"
                self._note(instance, instance.last_error, LogLevel.ERROR)
                self._set_state(instance, ServiceState.CRASHED)
                return False
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
                with anyio.fail_after(DEPENDENCY_TIMEOUT):
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
        while not instance.stop_requested:
            provider = self.exposes.get(use.name)
            if provider is not None and provider is not checked:
                await self._check_secret(provider, use)
                checked = provider
            if provider is not None and any(i.ready for i in provider.instances):
                return provider
            instance.last_error = (
                f"waiting for exposed service {use.name!r}"
                + (f" ({provider.fqn})" if provider is not None else "")
            )
            if provider is None:
                if self._exposes_changed is None:
                    self._exposes_changed = anyio.Event()
                event = self._exposes_changed
            else:
                event = provider.changed
            async with anyio.create_task_group() as race:
                race.start_soon(_wait_then_cancel, event, race.cancel_scope)
                race.start_soon(_wait_then_cancel, instance.wakeup, race.cancel_scope)
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
        instance.last_error = f"cannot start {instance.fqn}: {message}"
        self._note(instance, instance.last_error, LogLevel.ERROR)
        self._set_state(instance, ServiceState.CRASHED)
        return False

    async def _supervise(self, instance: InstanceRuntime, handle: ServiceHandle, *, fresh: bool) -> ExitStatus:
        """From spawn (or adoption) to exit."""
        service = instance.service
        post_up = fresh and bool(service.config.hooks.post_up)
        instance.post_up_pending = post_up
        instance.handle = handle
        handle.notice = lambda message: self._note(instance, message, LogLevel.WARN)
        instance.last_error = None
        instance.started_at = datetime.now(UTC)
        instance.started_monotonic = time.monotonic()
        self._note(instance, f"started (pid {handle.pid})" if handle.pid else "started")
        self.app.bus.publish(
            ServiceStarted(fqn=instance.fqn, pid=handle.pid, container_id=handle.container_id)
        )
        self._set_state(instance, ServiceState.RUNNING)
        # Record it for adoption after the other starts of this batch have spawned: the
        # record needs the process's start time, which the kernel gives once its exec is
        # done; by then it is.
        await anyio.lowlevel.checkpoint()
        self._record_process(instance, handle)
        instance.recorded = True
        if not instance.post_up_pending:
            instance.settles += 1
            instance.settled_as = instance.state
        service.notify()
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
        instance.recorded = False
        instance.post_up_pending = False
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
        if outcome.ok:
            instance.post_up_pending = False
            instance.settles += 1
            instance.settled_as = instance.state
            service.notify()
            return
        if instance.stop_requested:
            return
        instance.failure = f"{outcome.message}; the instance was stopped"
        instance.stop_requested = True
        config = service.config
        await handle.stop(config.stop_signum(), config.stop_grace)

    async def _after_exit(self, instance: InstanceRuntime, status: ExitStatus) -> bool:
        """Publish the exit and apply the restart policy; True to run again."""
        ran_for = time.monotonic() - instance.started_monotonic
        instance.healthy = None
        if status.success:
            self._note(instance, f"{status.describe()}")
            self.app.bus.publish(ServiceExited(fqn=instance.fqn, exit_code=status.exit_code))
            self._set_state(instance, ServiceState.EXITED)
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
            self._set_state(instance, ServiceState.CRASHED)
        return await self._maybe_restart(instance, status, ran_for)

    async def _after_failure(self, instance: InstanceRuntime, status: ExitStatus) -> bool:
        """A start that failed counts as a failure for the restart policy."""
        if instance.stop_requested or instance.state == ServiceState.STOPPED:
            return False
        return await self._maybe_restart(instance, status, 0.0)

    async def _maybe_restart(self, instance: InstanceRuntime, status: ExitStatus, ran_for: float) -> bool:
        service = instance.service
        policy = service.config.restart.policy
        if instance.stop_requested or self.shutting_down:
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
        self.app.state_writer.queue(*_state_row(service))
        self.app.bus.publish(
            ServiceRestarting(fqn=instance.fqn, attempt=instance.backoff.attempt, delay=delay)
        )
        if delay > 0:
            self._set_state(instance, ServiceState.BACKOFF)
            self._note(instance, f"restarting in {delay:.2f} s (attempt {instance.backoff.attempt})")
            with anyio.move_on_after(delay):
                await instance.wakeup.wait()
            instance.wakeup = anyio.Event()
        return not instance.stop_requested

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
                    self._launch(instance, adopted)
            # The surplus leaves the service now; its processes are stopped below, before
            # the daemon answers anyone (a scale-up must not meet them half stopped).
            del service.instances[max(service.scale, 1) :]
            if service.desired == "running":
                for instance in service.wanted():
                    if instance not in replaced:
                        self._launch(instance, None)
        if unwanted or outdated:
            kept = await self._stop_adopted(unwanted, outdated)
            for instance, handle in outdated:
                self._launch(instance, handle if instance in kept else None)
        self._stop_orphans()

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
        sources = self.app.sources.sources if self.app.sources is not None else {}
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
        """Stop every service (dependents first), or leave them running for the next daemon."""
        self.shutting_down = True
        if keep_services:
            self.save_log_offsets()
            await self.app.state_writer.flush()
            return
        running = [s for s in self.services.values() if any(i.running_task for i in s.instances)]
        for level in _reverse_levels(running):
            # Not patient: an engine that is away must not hold the daemon's exit; what it
            # runs keeps its record, and the next daemon adopts it or stops it.
            for instance, why in await self._stop_level([i for service in level for i in service.instances],
                                                        patient=False):
                log.warning("not stopped: %s: %s; the next daemon takes it over", instance.fqn, why)
        await self.app.state_writer.flush()

    # --- state, health, notes -----------------------------------------------------------

    def _set_state(self, instance: InstanceRuntime, state: ServiceState) -> None:
        previous = instance.state
        if previous == state:
            instance.service.notify()
            return
        instance.state = state
        if state in _SETTLED_STATES and state not in _READY_STATES and state != ServiceState.STOPPED:
            instance.settles += 1
            instance.settled_as = state
        self.app.bus.publish(ServiceStateChanged(fqn=instance.fqn, state=state, previous=previous))
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
        if instance.state in _READY_STATES:
            self._set_state(instance, ServiceState.RUNNING if healthy else ServiceState.UNHEALTHY)
        else:
            instance.service.notify()

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


def _settled(instance: InstanceRuntime) -> bool:
    """Done starting: running (and recorded), or failed, or waiting to retry."""
    if instance.state not in _SETTLED_STATES:
        return False
    if instance.state == ServiceState.STOPPED:
        return not instance.running_task
    if instance.state in _READY_STATES:
        return instance.recorded and not instance.post_up_pending
    return True


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
