"""What a command answers: each instance's :class:`~hive_client.InstanceOutcome`.

A job returns a :class:`JobResult` (the instances it started, those it could not stop
now); the caller waits, outside the service's owner and with its own deadline, for the
started ones to settle, then :func:`judge` says what became of each: ``done``,
``pending`` (still on its way, and why) or ``failed`` (and why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hive_client import InstanceOutcome

from .machine import READY, SETTLED, WIRE_STATE, Phase
from .runtime import InstanceRuntime
from .stopping import Left

__all__ = ["JobResult", "Launched", "done", "judge", "pending", "superseded"]

# Instances a start (restart, scale) acted on: each with its settle count then, or None
# when there is nothing to wait for (it was up already, or it starts once stopped).
Launched = dict[InstanceRuntime, int | None]


@dataclass
class JobResult:
    """What a job did: the instances it started, those it could not stop now, and the
    outcomes it judged itself (a rollout rolled back)."""

    launched: Launched = field(default_factory=dict)
    left: Left = field(default_factory=list)
    answered: list[InstanceOutcome] = field(default_factory=list)


def judge(instance: InstanceRuntime, seen: int | None) -> InstanceOutcome:
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
    if phase is Phase.UNREACHABLE:
        return InstanceOutcome(fqn=instance.fqn, result="pending", state=state,
                               reason=reason or "its container engine is away")
    return InstanceOutcome(fqn=instance.fqn, result="failed", state=state, reason=reason)


def pending(instance: InstanceRuntime, why: str) -> InstanceOutcome:
    return InstanceOutcome(fqn=instance.fqn, result="pending", state=str(instance.state), reason=why)


def superseded(instance: InstanceRuntime, why: str) -> InstanceOutcome:
    """A command a newer one replaced before it ran (a start merged into a stop)."""
    return InstanceOutcome(fqn=instance.fqn, result="failed", state=str(instance.state), reason=why)


def done(instance: InstanceRuntime) -> InstanceOutcome:
    return InstanceOutcome(fqn=instance.fqn, result="done", state=str(instance.state))
