"""Checks across services: dependencies and cycles, port conflicts, routes, expose names."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping

from ._issues import IssueSink, KeyPath
from ._model import ServiceConfig


def check_services(
    services: Mapping[str, ServiceConfig],
    sink: IssueSink,
    *,
    declared: Collection[str] | None = None,
) -> None:
    """``declared`` are all service names of the file, including ones that failed to build,
    so a dependency on a broken service is not also reported as unknown."""
    known = set(declared) if declared is not None else set(services)
    _check_dependencies(services, known, sink)
    _check_cycles(services, sink)
    _check_ports(services, sink)
    _check_routes(services, sink)
    _check_expose_names(services, sink)


def _depends_on_line_path(name: str, service: ServiceConfig, dependency: str) -> KeyPath:
    return ("services", name, "depends_on", service.depends_on.index(dependency))


def _check_dependencies(
    services: Mapping[str, ServiceConfig], known: set[str], sink: IssueSink
) -> None:
    for name, service in services.items():
        path: KeyPath = ("services", name, "depends_on")
        for dependency in service.depends_on:
            line_path = _depends_on_line_path(name, service, dependency)
            if dependency == name:
                sink.error(path, "Service cannot depend on itself", line_path=line_path)
            elif dependency not in known:
                sink.error(path, f"Unknown dependency: {dependency}", line_path=line_path)


def _check_cycles(services: Mapping[str, ServiceConfig], sink: IssueSink) -> None:
    """One error per cycle (strongly connected component), at its first service in file order."""
    order = {name: index for index, name in enumerate(services)}
    graph = {
        name: [dep for dep in service.depends_on if dep in services]
        for name, service in services.items()
    }
    for component in _strongly_connected(graph):
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and start not in graph[start]:
            continue
        cycle = _cycle_through(start, graph, set(component))
        next_hop = cycle[1]
        sink.error(
            ("services", start, "depends_on"),
            f"Circular dependency detected involving service: {start} ({' -> '.join(cycle)})",
            line_path=_depends_on_line_path(start, services[start], next_hop),
        )


def _strongly_connected(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a long dependency chain must not hit the recursion limit)."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_index = work.pop()
            if child_index == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = graph[node]
            if child_index < len(children):
                work.append((node, child_index + 1))
                child = children[child_index]
                if child not in index_of:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index_of[child])
                continue
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(start: str, graph: Mapping[str, list[str]], members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (BFS)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in graph[node]:
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]  # pragma: no cover - a component always has a cycle through start


def _check_ports(services: Mapping[str, ServiceConfig], sink: IssueSink) -> None:
    # Blue and green ports are both real listening ports, so both take part (spec S).
    owners: dict[int, list[tuple[str, KeyPath]]] = {}
    for name, service in services.items():
        if service.rollout is None:
            continue
        base: KeyPath = ("services", name, "rollout", service.rollout.type, "ports")
        for port_name, binding in service.rollout.ports.items():
            if binding.green is None:
                if binding.blue == 0:  # picked by the daemon: never another's
                    continue
                owners.setdefault(binding.blue, []).append(
                    (f"{name}:{port_name}", (*base, port_name))
                )
                continue
            owners.setdefault(binding.blue, []).append(
                (f"{name}:{port_name}(blue)", (*base, port_name, "blue"))
            )
            owners.setdefault(binding.green, []).append(
                (f"{name}:{port_name}(green)", (*base, port_name, "green"))
            )
    for port, users in owners.items():
        if len(users) > 1:
            labels = ", ".join(label for label, _ in users)
            sink.error(users[1][1], f"Port {port} is used by multiple services: {labels}")


def _route_key(host: str | None, path: str) -> tuple[str, str]:
    # `/api` and `/api/` are the same runtime route; host names are case-insensitive.
    return ((host or "").lower(), path.rstrip("/") or "/")


def _check_routes(services: Mapping[str, ServiceConfig], sink: IssueSink) -> None:
    first_owner: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        for index, endpoint in enumerate(service.proxy):
            key = _route_key(endpoint.host, endpoint.path)
            path: KeyPath = ("services", name, "proxy")
            if len(service.proxy) > 1:
                path = (*path, index)
            shown = f"{endpoint.host or ''}{endpoint.path}"
            owner = first_owner.get(key)
            if owner is None:
                first_owner[key] = name
            elif owner == name:
                sink.error(path, f"Route {shown} is defined twice in service {name}")
            else:
                sink.error(path, f"Route {shown} conflicts with service {owner}")


def _check_expose_names(services: Mapping[str, ServiceConfig], sink: IssueSink) -> None:
    first_owner: dict[str, str] = {}
    for name, service in services.items():
        if service.expose is None:
            continue
        owner = first_owner.setdefault(service.expose.name, name)
        if owner != name:
            sink.error(
                ("services", name, "expose", "name"),
                f"Expose name '{service.expose.name}' conflicts with service {owner}",
            )
