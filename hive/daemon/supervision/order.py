"""The order of commands over services that depend on each other (same source).

Starts take the closure (a service and, transitively, what it depends on); each
instance then waits for its own dependencies. Stops go the other way: levels, dependents
first, each level stopped in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .runtime import ServiceRuntime

__all__ = ["closure", "dependencies_of", "reverse_levels"]


def dependencies_of(service: ServiceRuntime) -> list[str]:
    """The fqns of what ``service`` depends on."""
    return [f"{service.source}:{name}" for name in service.config.depends_on]


def closure(
    services: Iterable[ServiceRuntime], lookup: Callable[[str], ServiceRuntime | None]
) -> list[ServiceRuntime]:
    """The services and, transitively, what they depend on (as ``lookup`` finds them)."""
    seen: dict[str, ServiceRuntime] = {}
    pending = list(services)
    while pending:
        service = pending.pop()
        if service.fqn in seen:
            continue
        seen[service.fqn] = service
        for fqn in dependencies_of(service):
            dependency = lookup(fqn)
            if dependency is not None:
                pending.append(dependency)
    return list(seen.values())


def reverse_levels(services: Sequence[ServiceRuntime]) -> list[list[ServiceRuntime]]:
    """Stop order: a service goes before (in an earlier level than) what it depends on."""
    by_fqn = {s.fqn: s for s in services}
    dependents: dict[str, list[str]] = {fqn: [] for fqn in by_fqn}
    for service in services:
        for dependency in dependencies_of(service):
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
