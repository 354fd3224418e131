"""A blue-green rollout: a service's next generation of instances started beside the one
that serves, switched to once healthy, the old one drained, then stopped.

It is the service's ``rollout`` job (:class:`~.jobs.JobKind`), run by its owner like any
other command, so nothing else acts on the service meanwhile. The instances of both
generations are ordinary instances moved by the transition table; what the rollout adds
is which list each generation is in (:class:`~.runtime.ServiceRuntime`):

1. ``incoming``: the new generation, on the other colour's ports, started;
2. its wait: every new instance up and healthy within ``timeout``, else it is stopped
   and the old one serves on (rolled back);
3. the switch: ``instances`` becomes the new generation in one assignment. The proxy
   reads a service's instances at each request, so the next request goes to the new one,
   and requests already forwarded stay on their connection; the old instances go to
   ``retiring`` and ``drain`` (phase ``draining``);
4. the drain: the old generation keeps running until the proxy has nothing in flight to
   it (:class:`Traffic`), for ``drain`` seconds at most; and for ``healthy_duration`` the
   new one must stay healthy, else the old one takes the traffic back (``restore``) and
   the new one is stopped;
5. the old generation is stopped.

A rollback with ``on_failure: abort`` stops the old generation too, and the service is
then wanted stopped.

Each step is an event (``rollout_*``). A new generation is not restarted by its restart
policy before its switch (a failure is the rollout's to judge), and its process record
is written at the switch: the record slot of an instance belongs to the serving
generation, so a daemon killed meanwhile adopts the generation that served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

import anyio

from hive.config import BlueGreenSettings
from hive_client import (
    InstanceOutcome,
    LogLevel,
    RolloutCompleted,
    RolloutDrained,
    RolloutHealthy,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSwitched,
)

from .instance_task import InstanceTasks
from .machine import READY, SETTLED, Input, Phase
from .outcomes import JobResult
from .phases import Phases
from .records import Records
from .registry import Registry
from .runtime import InstanceRuntime, ServiceRuntime
from .stopping import Stopper

if TYPE_CHECKING:
    from ..events import EventBus

__all__ = ["Rollouts", "Traffic"]

log = logging.getLogger("hive.supervisor")

_SYNC_SECONDS = 10.0


class Traffic(Protocol):
    """What the proxy has in flight to instances (the daemon's proxy sets it)."""

    async def quiet(self, ports: Collection[int]) -> None:
        """Until no request or tunnel through the proxy is under way to ``ports``."""

    async def synced(self) -> None:
        """Until new requests go to the instances the services list now (a proxy that
        is configured from outside, such as caddy, takes a moment)."""


class Rollouts:
    def __init__(
        self, *, registry: Registry, instances: InstanceTasks, stopper: Stopper, phases: Phases,
        records: Records, bus: EventBus, traffic: Callable[[], Traffic | None],
    ) -> None:
        """``traffic``: the proxy's, once it exists (without it a drain lasts its whole
        grace period)."""
        self._registry = registry
        self._traffic = traffic
        self._instances = instances
        self._stopper = stopper
        self._phases = phases
        self._records = records
        self._bus = bus

    async def run(self, service: ServiceRuntime, settings: BlueGreenSettings) -> JobResult:
        """Roll ``service`` (running, wanted running) over to a new generation."""
        blue = service.instances
        generation = service.generation + 1
        color = "green" if service.color == "blue" else "blue"
        green = [InstanceRuntime(service, i.index, generation, color) for i in service.wanted()]
        service.incoming = green
        service.notify()
        self._bus.publish(RolloutStarted(fqn=service.fqn, generation=generation, color=color))
        for instance in green:
            self._phases.note(instance, f"rollout: generation {generation} starts on its {color} ports")
            self._instances.start(instance)

        problem = await self._wait_ready(service, green, settings.timeout)
        if problem is not None:
            return await self._give_up(service, green, problem, settings, switched=False)
        self._bus.publish(RolloutHealthy(fqn=service.fqn, generation=generation))

        # The switch: one assignment (the proxy reads ``instances`` per request).
        previous = service.generation
        for instance in blue:
            if instance.phase in (Phase.RUNNING, Phase.UNHEALTHY):
                self._phases.apply(instance, Input.DRAIN)
        service.instances, service.incoming, service.retiring = green, [], blue
        service.generation, service.color = generation, color
        for instance in green:
            if instance.handle is not None:
                self._records.record(instance, instance.handle)
        service.notify()
        await self._synced()
        self._bus.publish(RolloutSwitched(fqn=service.fqn, generation=generation, previous=previous))
        await self._stopper.stop([i for i in blue if i.live and i.phase is not Phase.DRAINING])

        problem = await self._watch(service, green, blue, settings)
        if problem is not None and any(i.phase is Phase.DRAINING for i in blue):
            return await self._give_up(service, green, problem, settings, switched=True)
        self._bus.publish(RolloutDrained(fqn=service.fqn, generation=previous))
        await self._stopper.stop(blue)
        service.retiring = []
        service.notify()
        self._bus.publish(RolloutCompleted(fqn=service.fqn, generation=generation))
        return JobResult(launched=dict.fromkeys(green))

    async def _wait_ready(self, service: ServiceRuntime, green: list[InstanceRuntime], timeout: float) -> str | None:
        """Until every new instance is ready; why not, if one failed or time ran out."""
        with anyio.move_on_after(timeout):
            while True:
                if self._registry.gone(service):
                    return "the service is going away"
                failed = next((i for i in green if i.phase in SETTLED and i.phase not in READY), None)
                if failed is not None:
                    return f"{failed.fqn} of generation {failed.generation} {failed.phase}" + (
                        f": {failed.last_error}" if failed.last_error else "")
                if all(i.ready for i in green):
                    return None
                await service.changed.wait()
        return f"generation {green[0].generation} was not healthy within {timeout:g} s"

    async def _watch(self, service: ServiceRuntime, green: list[InstanceRuntime], blue: list[InstanceRuntime],
                     settings: BlueGreenSettings) -> str | None:
        """After the switch: the new generation must stay ready for ``healthy_duration``
        (why not, if it did not), and the old one drains. Both must be over."""
        started = anyio.current_time()
        with anyio.move_on_after(settings.healthy_duration):
            while all(i.ready for i in green):
                if self._registry.gone(service):
                    return None  # going away: its stop (or the daemon's) follows
                await service.changed.wait()
            failed = next(i for i in green if not i.ready)
            return f"{failed.fqn} of generation {failed.generation} turned {failed.state} after the switch"
        rest = settings.drain - (anyio.current_time() - started)
        if rest > 0 and not self._registry.gone(service):
            with anyio.move_on_after(rest):
                await self._drained(blue)
        return None

    async def _synced(self) -> None:
        """Until the proxy routes as ``instances`` says; a proxy that cannot be told
        (caddy away) does not hold the rollout past ``_SYNC_SECONDS``."""
        traffic = self._traffic()
        if traffic is None:
            return
        with anyio.move_on_after(_SYNC_SECONDS) as waited:
            await traffic.synced()
        if waited.cancelled_caught:
            log.warning("rollout: the proxy did not take the new routes within %g s; going on", _SYNC_SECONDS)

    async def _drained(self, blue: list[InstanceRuntime]) -> None:
        """Until the proxy has nothing in flight to the old generation: its requests are
        answered, its WebSockets closed (never, without a proxy: the grace period ends it)."""
        traffic = self._traffic()
        if traffic is None:
            await anyio.sleep_forever()
        else:
            await traffic.quiet({port for instance in blue for port in instance.ports.values()})

    async def _give_up(self, service: ServiceRuntime, green: list[InstanceRuntime], problem: str,
                       settings: BlueGreenSettings, *, switched: bool) -> JobResult:
        """Roll back: the old generation serves (again), the new one is stopped; with
        ``on_failure: abort``, the old one is stopped too and the service wanted stopped."""
        generation = green[0].generation
        abort = settings.on_failure == "abort"
        if switched:
            blue = service.retiring
            for instance in blue:
                if instance.phase is Phase.DRAINING:
                    self._phases.apply(instance, Input.RESTORE)
                    if instance.healthy is False:
                        self._phases.apply(instance, Input.UNHEALTHY)
            service.generation, service.color = blue[0].generation, blue[0].color
            service.instances, service.retiring = blue, green
            for instance in blue:
                if instance.handle is not None:
                    self._records.record(instance, instance.handle)
            service.notify()
            await self._synced()
        else:
            service.incoming, service.retiring = [], green
        if abort:
            problem = f"{problem}; generation {service.generation} stopped too (on_failure: abort)"
            service.desired = "stopped"  # before the stop: nothing restarts it
            self._records.save_desired(service)
        log.warning("rollout of %s rolled back: %s", service.fqn, problem)
        for instance in green:
            self._phases.note(instance, f"rollout rolled back: {problem}", LogLevel.ERROR)
        self._bus.publish(RolloutRolledBack(fqn=service.fqn, generation=generation,
                                            serving=0 if abort else service.generation, reason=problem))
        await self._stopper.stop([*green, *service.instances] if abort else green)
        service.retiring = []
        service.notify()
        reason = f"rolled back: {problem}" if abort else \
            f"rolled back (generation {service.generation} serves on): {problem}"
        return JobResult(answered=[InstanceOutcome(fqn=i.fqn, result="failed", state=str(i.state), reason=reason)
                                   for i in green])
