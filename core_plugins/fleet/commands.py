"""The fleet's commands (``plugin_call("fleet", ...)``, ``hive fleet ...``) that write to etcd.

Each waits up to ``COMMAND_PATIENCE`` for etcd (an election takes 1-2 s) and answers a
bad request with a ``PluginCallError`` that says what to do.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from hive.plugin import PluginCallError

from .etcd import EtcdClient, absent, delete_op, modified_at, present, put_op
from .model import FleetService, Keys, Placement, PlaceRequest
from .scheduler import FleetView
from .scheduler import rebalance as plan_moves

__all__ = ["COMMAND_PATIENCE", "apply", "delete", "place", "rebalance"]

COMMAND_PATIENCE = 5.0  # s a user's command waits for etcd (an election takes 1-2 s)


async def delete(etcd: EtcdClient, keys: Keys, args: dict[str, Any]) -> dict[str, Any]:
    """Remove fleet services, all or none; the leader then deletes their assignments and
    each hive stops their instances."""
    names = args.get("names", [args["name"]] if "name" in args else None)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise PluginCallError("delete needs name (a fleet service) or names (a list of them)")
    service_keys = [keys.service(name) for name in names]
    done, _ = await etcd.txn([present(key) for key in service_keys], [delete_op(key) for key in service_keys],
                             patience=COMMAND_PATIENCE)
    if not done:
        missing = [name for name, key in zip(names, service_keys, strict=True) if await etcd.get(key) is None]
        raise PluginCallError(f"no fleet service {', '.join(map(repr, missing))}, nothing deleted; "
                              "`hive fleet services` lists them")
    return {"deleted": names}


async def rebalance(etcd: EtcdClient, keys: Keys, view: FleetView, args: dict[str, Any]) -> dict[str, Any]:
    """Mark the instances ``rebalance`` moves as draining, each with its target: its hive
    stops it and releases it, then the leader places it on the target. Each mark holds
    only if the assignment is unchanged since this hive's view of it."""
    only = args.get("service")
    if only is not None and only not in view.services:
        raise PluginCallError(f"no fleet service {only!r}; `hive fleet services` lists them")
    moves = []
    for move in plan_moves(view, only):
        placed = view.assignments[(move.service, move.index)]
        key = keys.assignment(move.service, move.index)
        drained = msgspec.structs.replace(placed.assignment, drain=True)
        done, _ = await etcd.txn(
            [modified_at(key, placed.mod_revision)],
            [put_op(key, msgspec.json.encode(drained).decode(), placed.lease),
             put_op(keys.move(move.service, move.index), move.target)], patience=COMMAND_PATIENCE)
        if done:
            moves.append({"instance": f"{move.service}-{move.index}", "from": move.source, "to": move.target})
    return {"moves": moves}


async def apply(etcd: EtcdClient, keys: Keys, args: dict[str, Any]) -> dict[str, Any]:
    """Put fleet services into etcd (one applied again is replaced); all are checked first."""
    raw = args.get("services")
    if not isinstance(raw, list):
        raise PluginCallError("apply needs services: a list of {name, config, replicas, labels, spread}")
    try:
        services = [msgspec.convert(item, FleetService) for item in raw]
    except (msgspec.ValidationError, ValueError) as exc:
        raise PluginCallError(f"invalid fleet service: {exc}") from None
    for service in services:
        await etcd.put(keys.service(service.name), msgspec.json.encode(service).decode(), patience=COMMAND_PATIENCE)
    return {"applied": [service.name for service in services]}


async def place(etcd: EtcdClient, keys: Keys, view: FleetView, source: str, args: dict[str, Any]) -> dict[str, Any]:
    """A new one-replica fleet service (create-if-absent), answered once the leader has
    assigned it to a hive (seen on this hive's watch). Not assigned within ``wait``: it is
    deleted again and refused, so nothing is placed behind a refusal's back."""
    try:
        request = msgspec.convert(args, PlaceRequest)
        service = FleetService(name=request.name, config=request.config, replicas=1, labels=request.labels)
    except (msgspec.ValidationError, ValueError) as exc:
        raise PluginCallError(f"invalid place request: {exc}") from None
    key = keys.service(service.name)
    created, revision = await etcd.txn([absent(key)], [put_op(key, msgspec.json.encode(service).decode())],
                                       patience=COMMAND_PATIENCE)
    if not created:
        raise PluginCallError(f"fleet service {service.name!r} exists already; `hive fleet services` lists them")
    with anyio.move_on_after(request.wait):
        # Newer than the service: an assignment of an earlier service of that name (being
        # deleted) is not this one's.
        while (placed := view.assignments.get((service.name, 0))) is None or placed.token <= revision:
            await view.changed.wait()
        instance = f"{service.name}-0"
        answer = Placement(service=service.name, instance=instance, fqn=f"{source}:{instance}",
                           hive_id=placed.assignment.hive_id, token=placed.token)
        return {field: getattr(answer, field) for field in answer.__struct_fields__}
    await etcd.txn([present(key)], [delete_op(key)], patience=COMMAND_PATIENCE)
    raise PluginCallError(f"{service.name}: no hive took it within {request.wait:g} s (none has its runner "
                          f"{service.runner!r}, the labels {service.labels} and room); nothing is left of it")
