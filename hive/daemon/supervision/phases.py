"""The one place an instance's phase changes, and the notes that go with it.

:meth:`Phases.apply` looks the next phase up in :data:`.machine.TRANSITIONS`;
:meth:`Phases.force` sets it (and is called directly only when an instance's task ends
unexpectedly). Every collaborator of the supervisor that moves an instance along holds
this object and goes through it: state-change events, settle counts and the wake-up of
those watching the service happen here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hive_client import LogLevel, ServiceHealthChanged, ServiceStateChanged, ServiceWaiting

from .machine import SETTLED, WIRE_STATE, Input, Phase, next_phase
from .runtime import InstanceRuntime

if TYPE_CHECKING:
    from ..events import EventBus
    from ..logs import LogHub

__all__ = ["Phases"]


class Phases:
    def __init__(self, bus: EventBus, logs: LogHub) -> None:
        self._bus = bus
        self._logs = logs

    def apply(self, instance: InstanceRuntime, given: Input) -> Phase:
        """The one place an instance's phase changes: by the table (machine.TRANSITIONS)."""
        phase = next_phase(instance.phase, given)
        if phase is not instance.phase:
            self.force(instance, phase)
        else:
            instance.service.notify(instance)
        return phase

    def force(self, instance: InstanceRuntime, phase: Phase) -> None:
        """Set the phase (by the table, or when the instance's task ends unexpectedly)."""
        previous, instance.phase = instance.phase, phase
        if phase in SETTLED:
            instance.settles += 1
            instance.settled_as = phase
        state, before = WIRE_STATE[phase], WIRE_STATE[previous]
        if state != before:
            self._bus.publish(ServiceStateChanged(fqn=instance.fqn, state=state, previous=before,
                                                  generation=instance.event_generation))
        instance.service.notify(instance)

    def fail(self, instance: InstanceRuntime, message: str, given: Input = Input.START_FAILED) -> bool:
        """A start that cannot go on: why, in its log and its status. (Told to stop
        meanwhile, the stop is what it does: it ends stopped.) Always False."""
        instance.last_error = message
        self.note(instance, message, LogLevel.ERROR)
        if not instance.stopping:
            self.apply(instance, given)
        else:
            instance.service.notify(instance)
        return False

    def waiting(self, instance: InstanceRuntime, reason: str | None) -> None:
        """What a starting instance waits for (None: nothing any more), as its last error,
        told to followers (`hive up`, `hive services`) by an event."""
        if instance.last_error == reason:
            return
        instance.last_error = reason
        self._bus.publish(ServiceWaiting(fqn=instance.fqn, reason=reason or ""))
        instance.service.notify(instance)

    def start_failed(self, instance: InstanceRuntime, message: str) -> bool:
        return self.fail(instance, f"cannot start {instance.fqn}: {message}")

    def health_changed(self, instance: InstanceRuntime, healthy: bool, message: str) -> None:
        if instance.healthy == healthy:
            return
        instance.healthy = healthy
        self._bus.publish(ServiceHealthChanged(fqn=instance.fqn, healthy=healthy, message=message,
                                                   generation=instance.event_generation))
        self.note(instance, f"health: {'healthy' if healthy else 'unhealthy'} ({message})",
                  LogLevel.INFO if healthy else LogLevel.WARN)
        self.apply(instance, Input.HEALTHY if healthy else Input.UNHEALTHY)

    def note(self, instance: InstanceRuntime, message: str, level: LogLevel = LogLevel.INFO) -> None:
        """A line from the daemon in the instance's log."""
        self._logs.note(instance.fqn, message, level=level)
