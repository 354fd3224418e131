"""At start-up: take over what earlier daemons left running.

Each instance's process record (see :mod:`.records`) names how its runner finds the
process again; an instance with no record is looked for by the environment marker
(a daemon killed before it recorded a start). What is found is adopted and supervised,
or stopped when no one wants it any more (its stop or scale-down was cut short), or
replaced when it runs an older configuration. Only the serving generation of a blue-green
service has a record: the other generation's processes (a rollout cut short) are found by
the marker and stopped, so they do not hold their colour's ports. Records of services that no longer exist
are orphans: their processes are stopped in the background.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from hive.config import RuntimeTemplateError
from hive_client import __version__
from runners.base import RunnerError, ServiceHandle

from ..runner_registry import RunnerRegistry, UnknownRunner
from ..store import ProcessRecord
from .instance_task import InstanceTasks
from .launch import Launcher, config_digest
from .machine import Input
from .phases import Phases
from .records import Records
from .registry import Registry
from .runtime import InstanceRuntime, ServiceRuntime

if TYPE_CHECKING:
    from ..logs import LogHub

__all__ = ["Adoption"]

log = logging.getLogger("hive.supervisor")

# A process whose service is gone gets this long after SIGTERM (its own grace is gone too).
ORPHAN_GRACE = 10.0

_Found = list[tuple[InstanceRuntime, ServiceHandle]]


class Adoption:
    def __init__(
        self, *, tasks: anyio.abc.TaskGroup, runners: RunnerRegistry, registry: Registry, phases: Phases,
        launcher: Launcher, records: Records, instances: InstanceTasks, logs: LogHub,
    ) -> None:
        self._tasks = tasks
        self._runners = runners
        self._registry = registry
        self._phases = phases
        self._launcher = launcher
        self._records = records
        self._instances = instances
        self._logs = logs

    async def resume(self, source_loaded: Callable[[str], bool]) -> None:
        """Adopt what earlier daemons left running, start what should run.

        Instances beyond the current scale (a daemon killed in the middle of scaling
        down), and those of a service the user stopped (killed in the middle of that
        stop), are adopted and stopped, so no copy runs twice, unwanted or unsupervised.
        Processes started from an older configuration (hive.yaml edited while no daemon
        ran, a reload cut short) are replaced, as a reload would have.
        ``source_loaded(name)``: whether that source loaded completely (else the
        records of services it does not list are left alone).

        A service whose source has an owner (a plugin, see ``Registry.source_owners``)
        is only adopted: whatever of it no longer runs stays stopped, for its owner to
        start or not once it runs (a fleet instance may run on another machine now)."""
        recorded: dict[str, int] = {}
        for fqn, index in self._records.processes:
            recorded[fqn] = max(recorded.get(fqn, 0), index + 1)
        # Stopped together at the end: the start takes one stop grace, not one per service.
        unwanted: _Found = []
        outdated: _Found = []
        strays: _Found = []
        for service in list(self._registry.services.values()):
            service.grow(recorded.get(service.fqn, 0))
            wanted = service.wanted() if service.desired == "running" else []
            replaced: set[InstanceRuntime] = set()  # this service's, started once stopped
            for instance in service.instances:
                adopted, older = await self._adopt(instance)
                if service.blue_green:
                    strays += await self._strays(instance, adopted)
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
            owner = self._registry.owner_of(service)
            if service.desired == "running" and owner is not None:
                self._left_to_owner(service, owner, replaced)
            elif service.desired == "running":
                for instance in service.wanted():
                    if instance not in replaced and not instance.live:
                        self._instances.start(instance)
        if unwanted or outdated or strays:
            kept = await self._stop_adopted(unwanted, outdated, strays)
            left_stopped: set[ServiceRuntime] = set()
            for instance, handle in outdated:
                if instance in kept:
                    self._adopted(instance, handle)
                elif self._registry.owner_of(instance.service) is None:
                    self._instances.start(instance)
                else:
                    left_stopped.add(instance.service)
            for service in left_stopped:  # replaced, so stopped, and its owner decides
                self._stopped_for_owner(service)
        self._stop_orphans(source_loaded)

    def _left_to_owner(self, service: ServiceRuntime, owner: str, replaced: set[InstanceRuntime]) -> None:
        """An owned service's instances that no longer run are not started: they stay
        stopped, and so does the service when none of it runs (its stored desired state
        too: a later reload must not start it either), until its owner starts it."""
        left = [instance for instance in service.wanted() if instance in replaced or not instance.live]
        for instance in left:
            self._phases.note(instance, f"not started after the daemon's restart: plugin {owner} decides")
        if left:
            log.info("%s: %d instances not started: its source's owner (plugin %s) decides",
                     service.fqn, len(left), owner)
        if not any(instance.live or instance in replaced for instance in service.instances):
            self._stopped_for_owner(service)

    def _stopped_for_owner(self, service: ServiceRuntime) -> None:
        """None of an owned service runs: it is stopped, its stored desired state too."""
        if service.desired == "running" and not any(instance.live for instance in service.instances):
            service.desired = "stopped"
            self._records.save_desired(service)

    def _adopted(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """Supervise a process an earlier daemon started."""
        self._phases.apply(instance, Input.ADOPTED)
        self._instances.spawn_task(instance, handle)

    async def _stop_adopted(self, unwanted: _Found, outdated: _Found, strays: _Found) -> set[InstanceRuntime]:
        """Stop, together, adopted processes no one wants any more, those of an older
        configuration (never supervised: a stop must not race the start of their
        supervision) and the generation a killed daemon's rollout left. The outdated ones
        that would not stop: kept, and supervised as they are rather than run twice."""
        kept: set[InstanceRuntime] = set()

        async def stop(instance: InstanceRuntime, handle: ServiceHandle, replacing: bool) -> None:
            config = instance.service.config
            try:
                await handle.stop(config.stop_signum(), config.stop_grace)
            except RunnerError as exc:
                if replacing:
                    log.warning("cannot replace %s: %s; adopting it as it is", instance.fqn, exc)
                    instance.config_digest = config_digest(instance.service)
                    kept.add(instance)
                    return
                log.error("cannot stop %s: %s", instance.fqn, exc)
            self._logs.unfollow(instance.fqn)
            self._records.forget(instance.service.fqn, instance.index)
            if not replacing:
                self._phases.note(instance, "stopped: not wanted (its stop or scale-down was cut short)")

        async def stop_stray(instance: InstanceRuntime, handle: ServiceHandle) -> None:
            config = instance.service.config
            try:
                await handle.stop(config.stop_signum(), config.stop_grace)
            except RunnerError as exc:
                log.error("cannot stop %s (pid %s), left by a rollout cut short: %s", instance.fqn, handle.pid, exc)
                return
            log.warning("stopped %s (pid %s): a rollout cut short left it running", instance.fqn, handle.pid)

        async with anyio.create_task_group() as stops:
            for instance, handle in strays:
                stops.start_soon(stop_stray, instance, handle)
            for instance, handle in unwanted:
                stops.start_soon(stop, instance, handle, False)
            for instance, handle in outdated:
                stops.start_soon(stop, instance, handle, True)
        return kept

    def _stop_orphans(self, source_loaded: Callable[[str], bool]) -> None:
        """Processes recorded for services that no longer exist (removed by a reload, or
        with their source, by a daemon killed before it stopped them) are stopped, in the
        background: nothing runs unsupervised. The processes of a source that failed to
        load are left alone (its services are not known, they may still be wanted)."""
        for (fqn, index), record in list(self._records.processes.items()):
            if fqn in self._registry.services:
                continue
            if not source_loaded(fqn.partition(":")[0]):
                # Its source is not loaded, or not all of it: the service may still be
                # wanted (a default hive.yaml missing at boot, an entry a newer Hive
                # refuses). Left running, and said so.
                log.warning("%s (pid %s) is not a known service; left running", fqn, record.pid)
                continue
            del self._records.processes[(fqn, index)]
            self._tasks.start_soon(self._stop_orphan, fqn, index, record)

    async def _stop_orphan(self, fqn: str, index: int, record: ProcessRecord) -> None:
        name = fqn if index == 0 else f"{fqn}#{index}"
        found = record.handle.get("container_id") or record.handle.get("pid")
        try:
            if await self._runners.get(record.runner).stop_orphan(name, record.handle, ORPHAN_GRACE):
                log.warning("stopped %s (%s): its service no longer exists", name, found)
        except (RunnerError, UnknownRunner) as exc:
            # The record stays: the next start tries again (its engine may be back).
            log.warning("cannot stop %s (%s), whose service no longer exists: %s", name, found, exc)
            return
        self._records.forget(fqn, index)

    async def _strays(self, instance: InstanceRuntime, adopted: ServiceHandle | None) -> _Found:
        """The instance's processes an earlier daemon started that are not ``adopted``:
        the generation a rollout was starting (or draining) when that daemon was killed."""
        service = instance.service
        try:
            runner = self._runners.get(service.config.runner.type)
            spec = self._launcher.run_spec(instance)
        except (UnknownRunner, RuntimeTemplateError):
            return []
        found: _Found = []
        try:
            for record in await runner.discover(spec, self._launcher.marker):
                if adopted is not None and _same(record, adopted):
                    continue
                handle = await runner.adopt(spec, record)
                if handle is not None:
                    found.append((instance, handle))
                elif await runner.stop_orphan(spec.fqn, record, spec.stop_grace):
                    # Not adoptable (a container of another configuration: the rollout's
                    # new one, or its other colour's ports), stopped by its name alone.
                    log.warning("stopped %s (%s): a rollout cut short left it running", instance.fqn,
                                record.get("name") or record.get("container_id") or record.get("pid"))
        except RunnerError as exc:
            log.warning("cannot look for processes a rollout of %s left: %s", instance.fqn, exc)
        return found

    async def _adopt(self, instance: InstanceRuntime) -> tuple[ServiceHandle | None, bool]:
        """The instance's process left by an earlier daemon, if it still runs, and whether
        it was started from an older configuration (then to be replaced)."""
        service = instance.service
        record = self._records.processes.pop((service.fqn, instance.index), None)
        try:
            runner = self._runners.get(service.config.runner.type)
        except UnknownRunner:
            return None, False
        if record is not None:
            # The ports it was started with (the daemon picked them, for instances > 0).
            instance.ports = dict(record.ports)
            if record.started_at > 0:  # its uptime counts from there (a wall clock reading)
                instance.started_at = datetime.fromtimestamp(record.started_at, UTC)
            if service.blue_green and instance.index == 0 and record.ports == service.config.ports("green"):
                service.color = instance.color = "green"  # a rollout left it on its green ports
        try:
            spec = self._launcher.run_spec(instance)
        except RuntimeTemplateError:
            return None, False
        handle: ServiceHandle | None = None
        offsets = (0, 0)
        if record is not None and record.runner == runner.name:
            offsets = record.log_offsets
            try:
                handle = await runner.adopt(spec, record.handle)
            except RunnerError as exc:
                log.warning("cannot adopt %s: %s", instance.fqn, exc)
        from_record = handle is not None  # the offsets are of its output
        if handle is None:
            try:
                for found in await runner.discover(spec, self._launcher.marker):
                    handle = await runner.adopt(spec, found)
                    if handle is not None:
                        break
            except RunnerError as exc:  # its engine is not up yet (boot order): start afresh
                log.warning("cannot look for a running %s: %s", instance.fqn, exc)
        if handle is None:
            if record is not None:
                self._records.forget(service.fqn, instance.index)
            return None, False
        current = config_digest(service)
        recorded = record.config_digest if record is not None else ""
        # Started from a configuration changed since (a reload cut short by a kill,
        # hive.yaml edited while no daemon ran)? Digests of two Hive versions may differ
        # for one configuration: not compared.
        older = bool(recorded) and recorded != current and recorded.partition("/")[0] == __version__
        # Followed either way: what it writes until it is stopped is read too.
        output = handle.take_output()
        if output is not None:  # the memory captures it still holds
            self._logs.follow(instance.fqn, offsets=offsets if from_record else (0, 0),
                              output=output, owner=handle)
        else:
            self._logs.follow(instance.fqn, offsets=offsets)
        if older:  # stopped, then started again if wanted (resume)
            log.info("%s (pid %s) runs an older configuration", instance.fqn, handle.pid)
            self._phases.note(instance, f"pid {handle.pid} runs an older configuration: it is stopped")
        else:
            instance.config_digest = current
            log.info("adopted %s (pid %s)", instance.fqn, handle.pid)
            self._phases.note(instance, f"adopted by the daemon (pid {handle.pid})")
        return handle, older


def _same(record: dict[str, Any], handle: ServiceHandle) -> bool:
    """Whether a discovered ``record`` is the process (pid) or container (id) of ``handle``."""
    if record.get("pid") is not None:
        return bool(record.get("pid") == handle.pid)
    container = record.get("container_id")
    return container is not None and container == handle.record().get("container_id")
