"""Which addresses serve a route: the live instances of its service, in turn.

By default a service is served by its instances that are up (running, and healthy if it
has checks), read from the supervisor's instance runtime at each request: an instance that
turns unhealthy, stops or scales in is skipped from the next request on, with no event to
wait for and no table to rebuild. Each gets the port the route names, taken from the
instance's own ports (a scaled instance has its own).

A service's set can instead be *pinned* to given addresses (:meth:`Upstreams.pin`), for
the whole service in one dict assignment: that is the atomic switch a blue-green rollout
makes from one generation to the next. Requests already forwarded keep their connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from .routes import Route

if TYPE_CHECKING:
    from ..supervision import InstanceRuntime, ServiceRuntime

__all__ = ["Target", "Upstreams", "instance_port"]


class Target(NamedTuple):
    host: str
    port: int


def instance_port(instance: InstanceRuntime, reference: str) -> int | None:
    """The instance's port for a route's ``port``: a name, digits or ``""`` (``http``,
    else its only port). Digits that are one of the service's configured ports mean that
    port's name, so each scaled instance gets its own."""
    ports = instance.ports
    if not ports:
        return None
    if not reference:
        if "http" in ports:
            return ports["http"]
        return next(iter(ports.values())) if len(ports) == 1 else None
    if reference.isdigit():
        number = int(reference)
        for name, configured in instance.service.config.ports().items():
            if configured == number and name in ports:
                return ports[name]
        return number
    return ports.get(reference)


class Upstreams:
    def __init__(self, services: Mapping[str, ServiceRuntime]) -> None:
        self._services = services  # the supervisor's own dict: always current
        self._pinned: dict[str, tuple[Target, ...]] = {}
        self._turn: dict[str, int] = {}

    def pin(self, fqn: str, targets: Iterable[Target]) -> None:
        """Serve ``fqn`` from ``targets`` only, from the next request on."""
        self._pinned[fqn] = tuple(targets)

    def unpin(self, fqn: str) -> None:
        self._pinned.pop(fqn, None)

    def service(self, fqn: str) -> ServiceRuntime | None:
        return self._services.get(fqn)

    def candidates(self, route: Route) -> list[Target] | None:
        """The addresses to try for ``route``, the next one in turn first (round robin);
        None when no such service exists."""
        targets: Iterable[Target] | None = self._pinned.get(route.service)
        if targets is None:
            service = self._services.get(route.service)
            if service is None:
                return None
            targets = [
                Target("127.0.0.1", port)
                for instance in service.instances
                if instance.up and (port := instance_port(instance, route.port)) is not None
            ]
        found = list(targets)
        if len(found) > 1:
            turn = self._turn.get(route.service, 0)
            self._turn[route.service] = turn + 1
            start = turn % len(found)
            found = found[start:] + found[:start]
        return found
