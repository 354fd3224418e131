"""The services the supervisor knows, by fqn, and the index of what they expose.

:class:`Registry` is shared by the supervisor's collaborators: it is how the instance
task, the dependency waits and adoption find a service by name, tell whether one is
gone (removed, or the daemon shutting down), and wait for a provider of an expose name
to appear. It holds no behaviour of its own beyond lookups and that index.
"""

from __future__ import annotations

import anyio

from ..errors import RequestError
from .runtime import InstanceRuntime, ServiceRuntime

__all__ = ["Registry"]


class Registry:
    def __init__(self) -> None:
        self.services: dict[str, ServiceRuntime] = {}
        # expose name -> provider; a change wakes consumers waiting for one.
        self.exposes: dict[str, ServiceRuntime] = {}
        self._exposes_changed: anyio.Event | None = None
        self.shutting_down = False
        # The fqns sorted, for listings, while the set of services stays the same.
        self._fqns: list[str] = []
        self._fqns_sorted: list[str] = []
        # Source -> the plugin that decides which of its services run after a daemon
        # restart (the daemon adopts them, never starts them): see Adoption.resume.
        self.source_owners: dict[str, str] = {}

    def owner_of(self, service: ServiceRuntime) -> str | None:
        """The plugin that owns the service's source, or None (the daemon decides)."""
        return self.source_owners.get(service.source)

    def gone(self, service: ServiceRuntime) -> bool:
        """The service no longer takes commands: removed (or replaced), or the daemon stops."""
        return self.shutting_down or self.services.get(service.fqn) is not service

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
        """Every instance (of ``source``): services by fqn, each one's by index (during
        a rollout, the serving generation's, then the other's)."""
        services = self.services
        fqns = list(services)
        if fqns != self._fqns:  # a service came or went: sort again (not per listing)
            self._fqns, self._fqns_sorted = fqns, sorted(fqns)
        return [
            instance
            for fqn in self._fqns_sorted
            if source is None or services[fqn].source == source
            for instance in services[fqn].generations()
        ]

    def index_exposes(self) -> None:
        """Rebuild the expose index; consumers waiting for a provider are woken on a change."""
        exposes = {s.config.expose.name: s for s in self.services.values() if s.config.expose}
        if exposes != self.exposes:
            self.exposes = exposes
            changed, self._exposes_changed = self._exposes_changed, None
            if changed is not None:
                changed.set()

    def exposes_changed(self) -> anyio.Event:
        """Set at the next change of the expose index."""
        if self._exposes_changed is None:
            self._exposes_changed = anyio.Event()
        return self._exposes_changed
