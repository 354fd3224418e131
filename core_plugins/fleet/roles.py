"""The etcd roles that let each hive write only its own keys (etcd with authentication).

Every hive has a user and a role ``fleet-hive-<id>``: it reads the whole prefix and
writes one key, its record ``hives/<id>`` (where it also releases drained instances).
Hives that may lead placement also get ``fleet-scheduler`` (the ``leader`` key, the
assignments and the rebalance hints); hives users run ``hive fleet apply|delete|rebalance``
on (or whose signaling spawns are placed fleet-wide) get ``fleet-admin`` (services,
assignments' drain marks, hints). :func:`grants` says it as data; :func:`etcdctl` as the
commands docs/fleet.md shows.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .etcd import prefix_end
from .model import Keys

__all__ = ["Grant", "etcdctl", "grants"]

Access = Literal["READ", "WRITE", "READWRITE"]


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    access: Access
    key: str
    range_end: str = ""  # "": the key alone


def grants(prefix: str, hive_id: str, *, scheduler: bool, admin: bool) -> list[Grant]:
    """The permissions of hive ``hive_id``'s roles, for a fleet under ``prefix``."""
    keys = Keys(prefix)
    own = f"fleet-hive-{hive_id}"
    found = [Grant(role=own, access="READ", key=prefix, range_end=prefix_end(prefix)),
             Grant(role=own, access="READWRITE", key=keys.hive(hive_id))]
    if scheduler:
        found += [Grant(role="fleet-scheduler", access="READWRITE", key=keys.leader),
                  *(Grant(role="fleet-scheduler", access="READWRITE", key=part, range_end=prefix_end(part))
                    for part in (keys.assign, keys.moves))]
    if admin:
        found += [Grant(role="fleet-admin", access="READWRITE", key=part, range_end=prefix_end(part))
                  for part in (keys.services, keys.assign, keys.moves)]
    return found


def etcdctl(prefix: str, hive_id: str, *, scheduler: bool, admin: bool) -> list[str]:
    """The etcdctl commands that create the hive's user and roles (run as etcd's root)."""
    found = grants(prefix, hive_id, scheduler=scheduler, admin=admin)
    roles = sorted({grant.role for grant in found})
    commands = [f"etcdctl user add {hive_id}"]
    commands += [f"etcdctl role add {role}" for role in roles]
    for grant in found:
        flag = " --prefix" if grant.range_end == prefix_end(grant.key) else ""
        commands.append(f"etcdctl role grant-permission {grant.role}{flag} {grant.access.lower()} {grant.key}")
    commands += [f"etcdctl user grant-role {hive_id} {role}" for role in roles]
    return commands
