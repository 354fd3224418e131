"""What the daemon keeps about a service and its instances while it runs.

An instance's state is one value, its :class:`~.machine.Phase`; it changes only in
``Phases.apply`` (:mod:`.phases`), through the transition table. The rest is what the phase is
about: the handle of its process, its ports, the last error, the health monitor.
"""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING

import anyio

from hive.config import BLUE_GREEN_RUNNERS, HiveConfig, ServiceConfig
from hive_client import ServiceInfo, ServiceState
from runners.base import ServiceHandle

from .machine import LIVE, READY, WIRE_STATE, Phase

if TYPE_CHECKING:
    from ..health import HealthMonitor
    from .jobs import Owner

__all__ = ["Backoff", "InstanceRuntime", "ServiceRuntime"]


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


class InstanceRuntime:
    """One copy of a service, and everything runtime-only about it."""

    def __init__(self, service: ServiceRuntime, index: int, generation: int = 0, color: str = "") -> None:
        self.service = service
        self.index = index
        # Which generation of its service it belongs to (a blue-green rollout runs two at
        # once; see rollout.py), and the colour of the rollout ports it runs on. Both
        # generations share the instance's name, its logs and its process record slot.
        self.generation = generation or service.generation
        self.color = color or service.color
        # ``source:service`` for the first instance (whatever the scale, so its name and
        # logs stay put), ``source:service#N`` for the others. Both parts are fixed.
        self.fqn = service.fqn if index == 0 else f"{service.fqn}#{index}"
        self.phase = Phase.STOPPED
        self.handle: ServiceHandle | None = None
        # Times it reached a settled phase, and the last one: a start waits for the next
        # one, so an earlier run's end is never taken for this start's answer.
        self.settles = 0
        self.settled_as: Phase | None = None
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
        # The pre-up hooks and build of a start under way (a stop cancels them).
        self.preparing: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        # Set to wake its task out of a wait (a backoff, its dependencies) after a command.
        self.wakeup = anyio.Event()
        self.backoff: Backoff | None = None
        # When its restarts happened (monotonic), for the start limit; emptied by a start
        # a command asks for.
        self.restarts: deque[float] = deque()
        # The configuration its process was started from (see launch.config_digest), kept in
        # its process record: a later daemon does not adopt a process of an older one.
        self.config_digest = ""
        # The last ServiceInfo built, with the health-results version it showed; dropped
        # by every change the info shows (Phases.apply, and the writes beside it).
        self.info_cache: tuple[int, ServiceInfo] | None = None

    @property
    def state(self) -> ServiceState:
        """What the wire shows of its phase."""
        return WIRE_STATE[self.phase]

    @property
    def live(self) -> bool:
        """Its supervision task runs."""
        return self.phase in LIVE

    @property
    def event_generation(self) -> int | None:
        """Its generation, as its events carry it: a blue-green service's only."""
        return self.generation if self.service.blue_green else None

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.STOPPING, Phase.STOPPING_TO_START, Phase.FAILING)

    async def wait_finished(self) -> None:
        """Until its supervision task has ended (made only when someone waits)."""
        if not self.live:
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
        """Its process runs, and is healthy if it has health checks."""
        if self.phase not in (Phase.POST_UP, *READY):
            return False
        return self.healthy is True if self.service.config.healthchecks else True

    @property
    def ready(self) -> bool:
        """Up, and its post-up hooks done: what dependents and users wait for."""
        return self.phase in READY and self.up


class ServiceRuntime:
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
        # The generation that serves (blue-green: +1 at each rollout's switch).
        self.generation = 1
        self.color = "blue"  # the rollout ports the serving generation runs on
        self.instances: list[InstanceRuntime] = [InstanceRuntime(self, 0)]
        # During a blue-green rollout: the new generation starting beside ``instances``
        # (``incoming``), then the old one draining after the switch (``retiring``).
        self.incoming: list[InstanceRuntime] = []
        self.retiring: list[InstanceRuntime] = []
        self._changed: anyio.Event | None = None
        # One build for the instances that start together: the lock, and a counter of
        # the builds that succeeded (a start that waited for one does not build again).
        self.build_lock = anyio.Lock()
        self.builds = 0
        # Runs its commands one at a time (set by the supervisor when registered).
        self.owner: Owner | None = None

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change of one of its instances (made only when someone waits)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    @property
    def blue_green(self) -> bool:
        """Whether a restart is a blue-green rollout: script, docker and podman services
        (a container per colour); a compose project has no two names for its containers."""
        rollout = self.config.rollout
        return rollout is not None and rollout.type == "blue-green" and self.config.runner.type in BLUE_GREEN_RUNNERS

    def current(self, instance: InstanceRuntime) -> bool:
        """Whether ``instance`` belongs to the generation that serves (not one starting
        beside it, nor one draining): only that one is restarted and recorded."""
        return instance.generation == self.generation

    def generations(self) -> list[InstanceRuntime]:
        """Every instance of every generation: the serving one first."""
        if not self.incoming and not self.retiring:
            return self.instances
        return [*self.instances, *self.incoming, *self.retiring]

    def notify(self, instance: InstanceRuntime | None = None) -> None:
        """Something shown changed: of ``instance`` (its cached info is dropped), or of
        the service (every instance's is); whoever waits for a change is woken."""
        for each in (instance,) if instance is not None else self.generations():
            each.info_cache = None
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def wanted(self) -> list[InstanceRuntime]:
        """The instances the scale asks for."""
        return self.instances[: self.scale]

    def grow(self, count: int) -> None:
        while len(self.instances) < count:
            self.instances.append(InstanceRuntime(self, len(self.instances)))
