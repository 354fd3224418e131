"""The fleet as one hive sees it (a mirror of etcd's keys), and placement on it.

``FleetView`` is fed by one watch on the fleet's prefix; ``plan`` is pure: from a view it
says which missing instances go where, and which assignments are surplus.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import anyio
import msgspec

from .etcd import KeyValue
from .model import Assignment, FleetService, HiveRecord, Keys

__all__ = ["FleetView", "Placed", "Plan", "plan"]

log = logging.getLogger("hive.plugins.fleet")


@dataclass
class Placed:
    """An assignment as etcd holds it: ``token`` is its create revision."""

    assignment: Assignment
    token: int
    lease: int


@dataclass
class FleetView:
    keys: Keys
    hives: dict[str, HiveRecord] = field(default_factory=dict)
    services: dict[str, FleetService] = field(default_factory=dict)
    assignments: dict[tuple[str, int], Placed] = field(default_factory=dict)
    leader: tuple[str, int] | None = None  # (hive id, mod revision)
    revision: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)
    loaded: anyio.Event = field(default_factory=anyio.Event)  # set once etcd's keys are in

    def load(self, revision: int, kvs: list[KeyValue]) -> None:
        self.hives.clear()
        self.services.clear()
        self.assignments.clear()
        self.leader = None
        for kv in kvs:
            self.update(kv, deleted=False)
        self.revision = revision
        self.loaded.set()
        self.notify()

    def notify(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def update(self, kv: KeyValue, *, deleted: bool) -> None:
        """One key's new value (or its deletion); a record that does not parse is skipped."""
        key = kv.key
        try:
            if key == self.keys.leader:
                self.leader = None if deleted else (kv.value, kv.mod_revision)
            elif key.startswith(self.keys.hives):
                name = key.removeprefix(self.keys.hives)
                if deleted:
                    self.hives.pop(name, None)
                else:
                    self.hives[name] = msgspec.json.decode(kv.value, type=HiveRecord)
            elif key.startswith(self.keys.services):
                name = key.removeprefix(self.keys.services)
                if deleted:
                    self.services.pop(name, None)
                else:
                    self.services[name] = msgspec.json.decode(kv.value, type=FleetService)
            elif key.startswith(self.keys.assign):
                service, _, index = key.removeprefix(self.keys.assign).rpartition("/")
                if deleted:
                    self.assignments.pop((service, int(index)), None)
                else:
                    assignment = msgspec.json.decode(kv.value, type=Assignment)
                    self.assignments[(service, int(index))] = Placed(assignment, kv.create_revision, kv.lease)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.warning("fleet key %s is not a valid record, skipped: %s", key, exc)


@dataclass
class Plan:
    place: list[tuple[str, int, str, int]] = field(default_factory=list)  # (service, index, hive id, its lease)
    remove: list[tuple[str, int]] = field(default_factory=list)
    unplaced: list[tuple[str, int, str]] = field(default_factory=list)  # (service, index, why)


def _fits(service: FleetService, hive: HiveRecord) -> bool:
    return service.runner in hive.runners and all(hive.labels.get(k) == v for k, v in service.labels.items())


def plan(view: FleetView) -> Plan:
    """Where the missing instances go: a hive that has the runner, the labels and room;
    with ``spread``, the one running the fewest of the service, then the least loaded."""
    result = Plan()
    load: Counter[str] = Counter()
    per_service: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for (name, index), placed in view.assignments.items():
        service = view.services.get(name)
        if service is None or index >= service.replicas:
            result.remove.append((name, index))
            continue
        load[placed.assignment.hive_id] += 1
        per_service[name][placed.assignment.hive_id] += 1
    for name in sorted(view.services):
        service = view.services[name]
        for index in range(service.replicas):
            if (name, index) in view.assignments:
                continue
            candidates = [hive for hive in view.hives.values()
                          if _fits(service, hive) and load[hive.hive_id] < hive.capacity]
            if not candidates:
                result.unplaced.append((name, index, "no hive with the runner, the labels and room"))
                continue
            if service.spread:
                best = min(candidates, key=lambda h: (per_service[name][h.hive_id], load[h.hive_id], h.hive_id))
            else:
                best = min(candidates, key=lambda h: (load[h.hive_id], h.hive_id))
            load[best.hive_id] += 1
            per_service[name][best.hive_id] += 1
            result.place.append((name, index, best.hive_id, best.lease))
    return result
