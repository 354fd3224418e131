"""The fleet as one hive sees it (a mirror of etcd's keys), and placement on it.

``FleetView`` is fed by one watch on the fleet's prefix; ``plan`` is pure: from a view it
says which missing instances go where, and which assignments are surplus; so is
``rebalance``: which instances to move where, to even out spread and load.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import anyio
import msgspec

from .etcd import KeyValue
from .model import Assignment, FleetService, HiveRecord, Keys, released_mark

__all__ = ["FleetView", "Move", "Placed", "Plan", "plan", "rebalance"]

log = logging.getLogger("hive.plugins.fleet")


@dataclass
class Placed:
    """An assignment as etcd holds it: ``token`` is its create revision."""

    assignment: Assignment
    token: int
    lease: int
    mod_revision: int = 0


@dataclass
class FleetView:
    keys: Keys
    hives: dict[str, HiveRecord] = field(default_factory=dict)
    services: dict[str, FleetService] = field(default_factory=dict)
    assignments: dict[tuple[str, int], Placed] = field(default_factory=dict)
    moves: dict[tuple[str, int], str] = field(default_factory=dict)  # rebalance's hints: instance -> hive
    leader: tuple[str, int] | None = None  # (hive id, mod revision)
    revision: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)
    loaded: anyio.Event = field(default_factory=anyio.Event)  # set once etcd's keys are in

    def load(self, revision: int, kvs: list[KeyValue]) -> None:
        self.hives.clear()
        self.services.clear()
        self.assignments.clear()
        self.moves.clear()
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
                    self.assignments[(service, int(index))] = Placed(assignment, kv.create_revision, kv.lease,
                                                                     kv.mod_revision)
            elif key.startswith(self.keys.moves):
                service, _, index = key.removeprefix(self.keys.moves).rpartition("/")
                if deleted:
                    self.moves.pop((service, int(index)), None)
                else:
                    self.moves[(service, int(index))] = kv.value
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            log.warning("fleet key %s is not a valid record, skipped: %s", key, exc)


@dataclass
class Plan:
    place: list[tuple[str, int, str, int]] = field(default_factory=list)  # (service, index, hive id, its lease)
    remove: list[tuple[str, int]] = field(default_factory=list)
    # Drained assignments their hive has stopped: (service, index, the mod revision it stopped).
    released: list[tuple[str, int, int]] = field(default_factory=list)
    stale_moves: list[tuple[str, int]] = field(default_factory=list)  # hints no draining instance needs
    unplaced: list[tuple[str, int, str]] = field(default_factory=list)  # (service, index, why)


def _fits(service: FleetService, hive: HiveRecord) -> bool:
    return service.runner in hive.runners and all(hive.labels.get(k) == v for k, v in service.labels.items())


def plan(view: FleetView) -> Plan:
    """Where the missing instances go: a hive that has the runner, the labels and room;
    the hive a rebalance named for it, else with ``spread`` the one running the fewest of
    the service, then the least loaded. A draining instance counts where it still runs."""
    result = Plan()
    load: Counter[str] = Counter()
    per_service: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for (name, index), placed in view.assignments.items():
        service = view.services.get(name)
        holder = view.hives.get(placed.assignment.hive_id)
        if placed.assignment.drain and holder is not None and holder.lease == placed.lease \
                and released_mark(name, index, placed.mod_revision) in holder.released:
            result.released.append((name, index, placed.mod_revision))  # counted until deleted
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
            hinted = [hive for hive in candidates if hive.hive_id == view.moves.get((name, index))]
            if hinted:
                best = hinted[0]
            elif service.spread:
                best = min(candidates, key=lambda h: (per_service[name][h.hive_id], load[h.hive_id], h.hive_id))
            else:
                best = min(candidates, key=lambda h: (load[h.hive_id], h.hive_id))
            load[best.hive_id] += 1
            per_service[name][best.hive_id] += 1
            result.place.append((name, index, best.hive_id, best.lease))
    for (name, index) in view.moves:
        moved = view.assignments.get((name, index))
        if name not in view.services or (moved is not None and not moved.assignment.drain):
            result.stale_moves.append((name, index))
    return result


@dataclass
class Move:
    service: str
    index: int
    source: str  # hive id
    target: str


def rebalance(view: FleetView, only: str | None = None) -> list[Move]:
    """Moves that even out the fleet, greedy and bounded: first each spread service's
    count per hive (from the hive with the most to one with the fewest, while they differ
    by two or more), then the hives' load (while the busiest and the idlest differ by two
    or more, an instance whose service is no less spread after the move). A move goes
    only where the service fits and there is room; draining instances stay where they are."""
    load: Counter[str] = Counter()
    count: defaultdict[str, Counter[str]] = defaultdict(Counter)
    movable: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)  # hive -> instances
    for (name, index), placed in sorted(view.assignments.items()):
        hive = placed.assignment.hive_id
        load[hive] += 1
        count[name][hive] += 1
        if not placed.assignment.drain and name in view.services and (only is None or name == only):
            movable[hive].append((name, index))
    moves: list[Move] = []

    def move(name: str, source: str, target: str) -> None:
        instance = next(item for item in reversed(movable[source]) if item[0] == name)
        movable[source].remove(instance)
        load[source] -= 1
        load[target] += 1
        count[name][source] -= 1
        count[name][target] += 1
        moves.append(Move(name, instance[1], source, target))

    hives = sorted(view.hives.values(), key=lambda hive: hive.hive_id)
    for name in sorted(view.services) if only is None else [only]:
        service = view.services.get(name)
        if service is None or not service.spread:
            continue
        eligible = [hive.hive_id for hive in hives if _fits(service, hive)]
        for _ in range(len(view.assignments)):
            sources = [h for h in eligible if any(item[0] == name for item in movable[h])]
            targets = [hive.hive_id for hive in hives if hive.hive_id in eligible and load[hive.hive_id] < hive.capacity]
            if not sources or not targets:
                break
            source = max(sources, key=lambda h: (count[name][h], load[h], h))
            target = min(targets, key=lambda h: (count[name][h], load[h], h))
            if count[name][source] - count[name][target] < 2:
                break
            move(name, source, target)
    for _ in range(len(view.assignments)):
        busiest = max(hives, key=lambda hive: (load[hive.hive_id], hive.hive_id), default=None)
        with_room = [hive for hive in hives if load[hive.hive_id] < hive.capacity]
        idlest = min(with_room, key=lambda hive: (load[hive.hive_id], hive.hive_id), default=None)
        if busiest is None or idlest is None or load[busiest.hive_id] - load[idlest.hive_id] < 2:
            break
        fitting = [name for name, _ in reversed(movable[busiest.hive_id])
                   if _fits(view.services[name], idlest)
                   and (not view.services[name].spread
                        or count[name][idlest.hive_id] < count[name][busiest.hive_id])]
        if not fitting:
            break
        move(fitting[0], busiest.hive_id, idlest.hive_id)
    return moves
