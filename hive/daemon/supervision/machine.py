"""The lifecycle of one instance: named phases, named inputs, and the table between them.

An instance is in exactly one :class:`Phase`. Everything that happens to it, a command
or something its process did, is an :class:`Input`, and :data:`TRANSITIONS` says where
each input takes each phase. An input the table does not list for a phase is a bug,
never silently ignored: :func:`next_phase` raises :class:`IllegalTransition`.

The phases a task is alive in (:data:`LIVE`) are those in which the instance's own
supervision task runs; in the others nothing runs for the instance. What the wire shows
of a phase is :data:`WIRE_STATE` (``waiting`` shows as ``starting``, ``failing`` and
``stopping_to_start`` as ``stopping``, ``unreachable`` as ``unknown``).

docs/services.md draws the table; a test keeps the drawing equal to it.
"""

from __future__ import annotations

from enum import StrEnum

from hive_client import ServiceState

__all__ = [
    "LIVE",
    "READY",
    "SETTLED",
    "TRANSITIONS",
    "WIRE_STATE",
    "IllegalTransition",
    "Input",
    "Phase",
    "mermaid",
    "next_phase",
]


class Phase(StrEnum):
    STOPPED = "stopped"  # nothing runs; nothing asked it to
    WAITING = "waiting"  # its task waits for its dependencies and used services
    STARTING = "starting"  # pre-up hooks, build, the runner's start
    POST_UP = "post_up"  # its process runs; post-up hooks wait for it to be up, then run
    RUNNING = "running"  # up (healthy, or no checks) and its post-up hooks done
    UNHEALTHY = "unhealthy"  # up, its health checks fail
    BACKOFF = "backoff"  # ended; its restart policy starts it again after a delay
    STOPPING = "stopping"  # told to stop; its process is being stopped
    STOPPING_TO_START = "stopping_to_start"  # a start came while it stopped: starts once stopped
    FAILING = "failing"  # its post-up hooks failed: stopped, then crashed
    UNREACHABLE = "unreachable"  # its engine is away: whether it still runs is not known
    EXITED = "exited"  # ended with success; not restarted
    CRASHED = "crashed"  # ended with a failure, or could not start; not restarted
    PORT_CONFLICT = "port_conflict"  # could not start: one of its ports is taken
    DRAINING = "draining"  # an old generation after a rollout's switch: runs, gets no new requests


class Input(StrEnum):
    # Commands (from the service's owner, one at a time).
    START = "start"
    STOP = "stop"
    # From its own task.
    WAIT = "wait"  # a start (or a restart after a delay) begins with its dependencies
    DEPENDENCIES_READY = "dependencies_ready"
    SPAWNED = "spawned"  # the runner handed back a running process or container
    SPAWNED_WITH_POST_UP = "spawned_with_post_up"
    ADOPTED = "adopted"  # a process an earlier daemon started, taken over
    START_FAILED = "start_failed"  # a dependency, hook, build or runner said no
    PORT_TAKEN = "port_taken"
    POST_UP_DONE = "post_up_done"
    POST_UP_FAILED = "post_up_failed"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    ENGINE_AWAY = "engine_away"  # its runner lost the engine that runs it
    ENGINE_BACK = "engine_back"
    EXITED_OK = "exited_ok"  # its process ended with success
    EXITED_FAILED = "exited_failed"  # its process ended with a failure
    RETRY_LATER = "retry_later"  # the restart policy wants it again after a delay
    ENDED = "ended"  # a stopping task is over: nothing of the instance runs
    # From a rollout (its service's owner runs it, see rollout.py).
    DRAIN = "drain"  # the new generation took its traffic: it finishes what it has
    RESTORE = "restore"  # the new generation failed: it takes its traffic back


S, I = Phase, Input  # noqa: E741 (the table reads better with short names)
_UP = (S.POST_UP, S.RUNNING, S.UNHEALTHY)
_ENDED = (S.STOPPED, S.EXITED, S.CRASHED, S.PORT_CONFLICT)

# (phase, input) -> next phase. One screen; the diagram in docs/services.md is drawn from it.
TRANSITIONS: dict[tuple[Phase, Input], Phase] = {
    # start: what has ended begins again; a backoff is cut short; a stop finishes first.
    **{(p, I.START): S.WAITING for p in (*_ENDED, S.BACKOFF)},
    **{(p, I.START): p for p in (S.WAITING, S.STARTING, *_UP, S.UNREACHABLE)},
    (S.STOPPING, I.START): S.STOPPING_TO_START,
    (S.STOPPING_TO_START, I.START): S.STOPPING_TO_START,
    (S.FAILING, I.START): S.STOPPING_TO_START,
    # stop: whatever is alive stops; what has ended stays as it is.
    **{(p, I.STOP): S.STOPPING
       for p in (S.WAITING, S.STARTING, *_UP, S.UNREACHABLE, S.BACKOFF, S.STOPPING_TO_START)},
    **{(p, I.STOP): p for p in (*_ENDED, S.STOPPING, S.FAILING)},
    # a rollout's switch: the old generation drains (a start leaves it so); its rollback
    # gives it the traffic back.
    **{(p, I.DRAIN): S.DRAINING for p in (S.RUNNING, S.UNHEALTHY)},
    (S.DRAINING, I.START): S.DRAINING,
    (S.DRAINING, I.STOP): S.STOPPING,
    (S.DRAINING, I.RESTORE): S.RUNNING,
    # its own task
    **{(p, I.WAIT): S.WAITING for p in (S.WAITING, S.BACKOFF, S.CRASHED, S.EXITED, S.PORT_CONFLICT)},
    (S.WAITING, I.DEPENDENCIES_READY): S.STARTING,
    (S.STARTING, I.SPAWNED): S.RUNNING,
    (S.STARTING, I.SPAWNED_WITH_POST_UP): S.POST_UP,
    (S.STOPPED, I.ADOPTED): S.RUNNING,
    (S.WAITING, I.START_FAILED): S.CRASHED,
    (S.STARTING, I.START_FAILED): S.CRASHED,
    (S.STARTING, I.PORT_TAKEN): S.PORT_CONFLICT,
    (S.POST_UP, I.POST_UP_DONE): S.RUNNING,
    (S.POST_UP, I.POST_UP_FAILED): S.FAILING,
    (S.RUNNING, I.UNHEALTHY): S.UNHEALTHY,
    (S.UNHEALTHY, I.HEALTHY): S.RUNNING,
    **{(p, I.EXITED_OK): S.EXITED for p in (*_UP, S.UNREACHABLE, S.DRAINING)},
    **{(p, I.EXITED_FAILED): S.CRASHED for p in (*_UP, S.UNREACHABLE, S.DRAINING)},
    **{(p, I.ENGINE_AWAY): S.UNREACHABLE for p in (*_UP, S.UNREACHABLE)},
    (S.UNREACHABLE, I.ENGINE_BACK): S.RUNNING,
    **{(p, I.RETRY_LATER): S.BACKOFF for p in (S.CRASHED, S.EXITED, S.PORT_CONFLICT)},
    (S.STOPPING, I.ENDED): S.STOPPED,
    (S.FAILING, I.ENDED): S.CRASHED,
    (S.STOPPING_TO_START, I.ENDED): S.WAITING,
}

# Health is shown beside the phase, and a stop owed while the engine is away is the
# runner's to carry out: such an input moves no phase. (A process just spawned is
# recorded before it counts as running: its engine may go away meanwhile.)
for _phase in (S.STARTING, S.POST_UP, S.RUNNING, S.UNHEALTHY, S.UNREACHABLE, S.STOPPING, S.FAILING,
               S.STOPPING_TO_START, S.DRAINING):
    for _given in (I.HEALTHY, I.UNHEALTHY, I.ENGINE_AWAY, I.ENGINE_BACK):
        TRANSITIONS.setdefault((_phase, _given), _phase)
del _phase, _given

# Phases in which the instance's supervision task is alive.
LIVE = frozenset({S.WAITING, S.STARTING, *_UP, S.UNREACHABLE, S.BACKOFF, S.STOPPING, S.STOPPING_TO_START,
                  S.FAILING, S.DRAINING})
# Up: what dependents and users wait for (with health and post-up hooks judged apart).
READY = frozenset({S.RUNNING, S.UNHEALTHY})
# Where a start has its answer: up, or failed (and maybe retrying), or stopped meanwhile.
SETTLED = frozenset({S.RUNNING, S.UNHEALTHY, S.BACKOFF, S.EXITED, S.CRASHED, S.PORT_CONFLICT, S.STOPPED})

WIRE_STATE: dict[Phase, ServiceState] = {
    S.STOPPED: ServiceState.STOPPED,
    S.WAITING: ServiceState.STARTING,
    S.STARTING: ServiceState.STARTING,
    S.POST_UP: ServiceState.RUNNING,
    S.RUNNING: ServiceState.RUNNING,
    S.UNHEALTHY: ServiceState.UNHEALTHY,
    S.BACKOFF: ServiceState.BACKOFF,
    S.STOPPING: ServiceState.STOPPING,
    S.STOPPING_TO_START: ServiceState.STOPPING,
    S.FAILING: ServiceState.STOPPING,
    S.UNREACHABLE: ServiceState.UNKNOWN,
    S.EXITED: ServiceState.EXITED,
    S.CRASHED: ServiceState.CRASHED,
    S.PORT_CONFLICT: ServiceState.PORT_CONFLICT,
    S.DRAINING: ServiceState.DRAINING,
}


class IllegalTransition(Exception):
    """An input the table has no entry for in the current phase: a supervisor bug."""

    def __init__(self, phase: Phase, given: Input) -> None:
        super().__init__(f"no transition from {phase} on {given}")
        self.phase = phase
        self.input = given


def next_phase(phase: Phase, given: Input) -> Phase:
    try:
        return TRANSITIONS[(phase, given)]
    except KeyError:
        raise IllegalTransition(phase, given) from None


def mermaid() -> str:
    """The table as a Mermaid state diagram (self-loops left out), for docs/services.md."""
    lines = ["stateDiagram-v2", "    [*] --> stopped"]
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for (phase, given), target in TRANSITIONS.items():
        if target != phase:
            edges.setdefault((phase, target), []).append(given.value)
    for (phase, target), inputs in sorted(edges.items()):
        lines.append(f"    {phase.value} --> {target.value}: {', '.join(sorted(inputs))}")
    return "\n".join(lines) + "\n"
