"""The fleet core plugin: this hive as one agent of a fleet kept in etcd.

Tasks (all in ``run``'s task group):

- **membership**: a lease of ``lease_ttl`` seconds, renewed every third of it, and the
  hive's record (capacity, runners, labels) bound to it;
- **fence**: a timer that, when no renewal has succeeded for ``fence_after`` x the TTL
  (counted from when the last successful renewal was *sent*, so before etcd can expire
  the lease), stops every fleet instance here and starts none until a renewal succeeds;
- **watch**: one watch on the fleet's prefix keeps a ``FleetView`` of etcd, resuming from
  its last revision on any member;
- **scheduler**: campaigns for the ``leader`` key (bound to its lease); the leader places
  missing instances, each with a create-if-absent transaction bound to the target hive's
  lease and conditional on still being the leader;
- **agent**: runs the instances assigned to this hive and its current lease in the
  ``source`` SQLite source, and stops and deletes the others.

An instance gets ``HIVE_FLEET_TOKEN`` (the assignment's create revision: a fencing token
that only grows), ``HIVE_FLEET_INSTANCE`` (``service-index``) and ``HIVE_FLEET_HIVE``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import msgspec

from hive.plugin import CorePlugin, DaemonClient, DaemonEvent, PluginCallError
from hive_client import HiveError, NotFound, ServiceState

from . import access, commands
from .etcd import (
    EtcdClient,
    EtcdError,
    WatchCompacted,
    WatchEvent,
    absent,
    delete_op,
    leased_by,
    modified_at,
    put_op,
    tls_context,
)
from .model import Assignment, FleetService, FleetSettings, HiveRecord, Keys, released_mark
from .retry import EXPECTED, Episode
from .scheduler import FleetView, Placed, plan

__all__ = ["Fleet"]

log = logging.getLogger("hive.plugins.fleet")

_WRITES_AT_ONCE = 16  # a placement round's transactions in flight together
# An instance in one of these states has a process here (adopted or started).
_LIVE = frozenset({ServiceState.RUNNING, ServiceState.STARTING, ServiceState.UNHEALTHY, ServiceState.BACKOFF,
                   ServiceState.UNKNOWN, ServiceState.STOPPING, ServiceState.DRAINING})


class Fleet(CorePlugin[FleetSettings]):
    name = "fleet"
    version = "1.0.0"
    Settings = FleetSettings
    default_scope = "admin"  # it adds a source, creates and deletes services

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        settings = self.settings
        self.hive_id = settings.hive_id or socket.gethostname().lower()
        self.keys = Keys(settings.prefix)
        self.tls = tls_context(settings.ca_file, settings.cert_file, settings.key_file) \
            if any(e.startswith("https://") for e in settings.endpoints) else None
        credentials = (settings.username, settings.password()) if settings.username else None
        self.etcd = EtcdClient(settings.endpoints, request_timeout=settings.request_timeout,
                               connect_timeout=min(0.5, settings.request_timeout), credentials=credentials,
                               tls=self.tls)
        self.view = FleetView(self.keys)
        home = Path((await client.status()).home or ".")
        self.state_path = home / "fleet-state.json"
        self.lease = 0
        self.renewed_at = float("-inf")
        self.fenced = True  # nothing runs until the first lease is held
        self.fences = 0  # times this hive has fenced itself (status)
        self.running: dict[str, int] = {}  # instance name -> the token it runs with
        self.released: list[str] = []  # drained assignments stopped here (in this hive's record)
        self._act = anyio.Lock()  # the agent's actions and the fence never interleave
        self._renewal = anyio.Event()  # set (and replaced) at each renewal and unfencing
        self._source_ready = False
        first, cap = settings.request_timeout / 5, settings.lease_ttl / 3
        self.episodes = {what: Episode(what, first=first, cap=cap)
                         for what in ("registration", "lease renewal", "fencing", "watch", "placement", "instances")}

    async def on_event(self, event: DaemonEvent) -> None:
        pass

    async def shutdown(self) -> None:
        # Local instances stay: a daemon back within the lease adopts them.
        await self.etcd.aclose()

    # --- the local record of what runs (adoption after a restart) -------------------

    def _save(self) -> None:
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps({"lease": self.lease, "running": self.running}))
        os.replace(temporary, self.state_path)

    def _load(self) -> tuple[int, dict[str, int]]:
        try:
            state = json.loads(self.state_path.read_text())
            return int(state["lease"]), {str(k): int(v) for k, v in state["running"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return 0, {}

    # --- run ------------------------------------------------------------------------

    async def run(self) -> None:
        await self._register()
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_lease)
            group.start_soon(self._fence_timer)
            group.start_soon(self._watch)
            group.start_soon(self._agent)
            if self.settings.scheduler:
                group.start_soon(self._scheduler)

    async def _register(self) -> None:
        """Adopt the instances of a lease still alive; else stop them, then take a new lease.

        The daemon started none of them at its start (the fleet source is owned by this
        plugin): it adopted those whose processes still run, and only those are kept."""
        old_lease, running = self._load()
        while True:
            sent = anyio.current_time()
            try:
                await self._ensure_source()
                alive = old_lease > 0 and await self.etcd.time_to_live(old_lease) > 0
                if alive:
                    live = await self._live_names()
                    self.lease = old_lease
                    self.running = {name: token for name, token in running.items() if name in live}
                    log.info("fleet: lease %x still alive, adopting %d instances", old_lease, len(self.running))
                else:
                    if running or await self._local_names():
                        await self._stop_all("the lease of the previous run has expired")
                    self.lease = await self.etcd.grant(self.settings.lease_ttl)
                await self._publish()
                self._save()
                self._renewed(sent, unfence=True)
                self.episodes["registration"].ok()
                return
            except EXPECTED as exc:
                self.episodes["registration"].failed(exc)
                await self.episodes["registration"].backoff()

    async def _publish(self, released: list[str] | None = None) -> None:
        """This hive's record, bound to its lease. Once it is, it is updated keeping its
        lease: with etcd's authentication a put that names a lease needs the right to
        write every key bound to it, and the assignments bound to ours are the leader's."""
        settings = self.settings
        released = self.released if released is None else released
        record = HiveRecord(hive_id=self.hive_id, lease=self.lease, capacity=settings.capacity,
                            runners=settings.runners, labels=settings.labels, scheduler=settings.scheduler,
                            released=released)
        key, value = self.keys.hive(self.hive_id), msgspec.json.encode(record).decode()
        await self.etcd.txn([leased_by(key, self.lease)], [put_op(key, value, keep_lease=True)],
                            [put_op(key, value, self.lease)])
        self.released = released

    # --- membership and fencing -----------------------------------------------------

    async def _keep_lease(self) -> None:
        """Renew every third of the TTL; after a failure, retry at once with a short
        backoff (not a whole interval later), to renew before the fence comes."""
        interval = self.settings.lease_ttl / 3
        episode = self.episodes["lease renewal"]
        while True:
            sent = anyio.current_time()
            try:
                ttl = await self.etcd.keepalive(self.lease)
                if ttl > 0:
                    if self.fenced:
                        log.info("fleet: lease %x renewed again, unfencing", self.lease)
                    self._renewed(sent, unfence=True)
                else:
                    await self._renew_lost()
            except EXPECTED as exc:
                episode.failed(exc)
                await episode.backoff()
                continue
            episode.ok()
            await anyio.sleep(max(0.0, sent + interval - anyio.current_time()))

    async def _renew_lost(self) -> None:
        """The lease expired: whatever ran under it may already run elsewhere."""
        await self._fence("the lease expired")
        sent = anyio.current_time()
        self.lease = await self.etcd.grant(self.settings.lease_ttl)
        await self._publish()
        self._save()
        self._renewed(sent, unfence=True)

    async def _fence_timer(self) -> None:
        """Fence when renewals stop; a fence whose stops fail (the daemon does not answer)
        is tried again until every fleet instance here is stopped."""
        limit = self.settings.lease_ttl * self.settings.fence_after
        episode = self.episodes["fencing"]
        while True:
            renewal = self._renewal
            now = anyio.current_time()
            if self.fenced or now < self.renewed_at + limit:  # fenced: wait for a renewal, not spin
                with anyio.move_on_after(math.inf if self.fenced else self.renewed_at + limit - now):
                    await renewal.wait()
                continue
            try:
                await self._fence(f"no lease renewal for {limit:.1f} s")
            except EXPECTED as exc:
                episode.failed(exc)
                while episode.open and self.fenced:  # a renewal that lifts the fence ends it too
                    await episode.backoff()
                    try:
                        await self._stop_all("retrying the fence")
                    except EXPECTED as again:
                        episode.failed(again)
                    else:
                        episode.ok()
                episode.ok()

    def _renewed(self, sent: float, *, unfence: bool = False) -> None:
        self.renewed_at = sent
        if unfence and self.fenced:
            self.fenced = False
            self.view.notify()
        renewal, self._renewal = self._renewal, anyio.Event()
        renewal.set()

    async def _fence(self, why: str) -> None:
        if not self.fenced:
            log.warning("fleet: fencing: %s; stopping every fleet instance", why)
            self.fences += 1
        self.fenced = True
        await self._stop_all(why)

    async def _stop_all(self, why: str) -> None:
        async with self._act:
            names = set(self.running) | set(await self._local_names())
            failed: list[str] = []
            async with anyio.create_task_group() as group:
                for name in names:
                    group.start_soon(self._remove, name, failed)
            for name in names.difference(failed):
                self.running.pop(name, None)
            self._save()
        if failed:
            raise HiveError(f"could not stop {', '.join(sorted(failed))}")
        if names:
            await self.client.emit_event("fenced", f"stopped {len(names)} fleet instances: {why}",
                                         data={"instances": sorted(names)})

    # --- the view ---------------------------------------------------------------------

    async def _watch(self) -> None:
        """Load the view once (and after a compaction); otherwise resume the watch from
        the revision after the last one delivered."""
        episode = self.episodes["watch"]
        reload = True
        while True:
            try:
                if reload:
                    revision, kvs = await self.etcd.range_prefix(self.keys.prefix)
                    self.view.load(revision, kvs)
                    reload = False
                episode.ok()
                await self.etcd.watch_prefix(self.keys.prefix, self.view.revision + 1, self._deliver)
            except WatchCompacted:
                reload = True
                continue
            except EXPECTED as exc:
                episode.failed(exc)
                await episode.backoff()

    async def _deliver(self, revision: int, events: list[WatchEvent]) -> None:
        for event in events:
            self.view.update(event.kv, deleted=event.deleted)
        self.view.revision = revision
        self.view.notify()

    # --- the scheduler ----------------------------------------------------------------

    async def _scheduler(self) -> None:
        await self.view.loaded.wait()
        episode = self.episodes["placement"]
        while True:
            changed = self.view.changed
            leader = self.view.leader
            if not self.fenced and (leader is None or leader[0] == self.hive_id):
                try:
                    if leader is None:
                        won, revision = await self.etcd.txn([absent(self.keys.leader)],
                                                            [put_op(self.keys.leader, self.hive_id, self.lease)])
                        if won:
                            log.info("fleet: %s leads placement (revision %d)", self.hive_id, revision)
                            await self._place(revision)
                    else:
                        await self._place(leader[1])
                    episode.ok()
                except EXPECTED as exc:
                    episode.failed(exc)
                    with anyio.move_on_after(episode.next_delay()):  # or at the next change
                        await changed.wait()
                    continue
            await changed.wait()

    async def _place(self, leader_revision: int) -> None:
        """One round of placement, every write conditional on still leading. The writes of
        a round are independent (one plan, one key each), so they go out together, a few
        at a time: a burst of 250 takes a few round trips, not 250."""
        still_leading = modified_at(self.keys.leader, leader_revision)
        decided = plan(self.view)
        written = 0  # the revision of the last write: the next round plans from a view with it
        limit = anyio.Semaphore(_WRITES_AT_ONCE)

        failures: list[EtcdError] = []  # raised once the round is over, as one error

        async def write(compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> None:
            nonlocal written
            try:
                async with limit:
                    done, revision = await self.etcd.txn(compare, success)
            except EtcdError as exc:
                failures.append(exc)
                return
            if done:
                written = max(written, revision)

        async with anyio.create_task_group() as group:  # removals first: the plan counted their room
            for name, index in decided.remove:
                group.start_soon(write, [still_leading], [delete_op(self.keys.assignment(name, index))])
            for name, index, stopped_at in decided.released:  # unless it changed since its hive stopped it
                key = self.keys.assignment(name, index)
                group.start_soon(write, [still_leading, modified_at(key, stopped_at)], [delete_op(key)])
            for name, index in decided.stale_moves:
                group.start_soon(write, [still_leading], [delete_op(self.keys.move(name, index))])
        async with anyio.create_task_group() as group:
            for name, index, hive_id, lease in decided.place:
                # The hive may have gone (or come back with a new lease) since the plan: then
                # the compare fails, nothing is written, and the next round plans again.
                key = self.keys.assignment(name, index)
                value = msgspec.json.encode(Assignment(service=name, index=index, hive_id=hive_id)).decode()
                group.start_soon(write, [still_leading, absent(key), leased_by(self.keys.hive(hive_id), lease)],
                                 [put_op(key, value, lease), delete_op(self.keys.move(name, index))])
        if failures:
            raise failures[0]
        # A round planned before the watch brought this one's writes back would count the
        # hives' load without them, and fill a hive past its capacity.
        with anyio.move_on_after(self.settings.lease_ttl):
            while self.view.revision < written:
                await self.view.changed.wait()

    # --- the agent ----------------------------------------------------------------------

    def _mine(self, placed: Placed) -> bool:
        return placed.assignment.hive_id == self.hive_id and placed.lease == self.lease

    def _wanted(self) -> dict[str, tuple[FleetService, int]]:
        """Instance name -> (service, token) of what is assigned to this hive's lease and
        not draining (a rebalance moves it elsewhere)."""
        wanted = {}
        for (name, index), placed in self.view.assignments.items():
            service = self.view.services.get(name)
            if self._mine(placed) and not placed.assignment.drain and service is not None:
                wanted[f"{name}-{index}"] = (service, placed.token)
        return wanted

    async def _release_drained(self) -> None:
        """Give up the drained assignments whose instance has stopped here: only then may
        the leader place them elsewhere (a new key, a higher token). Said in this hive's own
        record (the leader deletes them): a hive writes no key but its own."""
        released = sorted(released_mark(name, index, placed.mod_revision)
                          for (name, index), placed in self.view.assignments.items()
                          if self._mine(placed) and placed.assignment.drain and f"{name}-{index}" not in self.running)
        if released != self.released:
            await self._publish(released)

    async def _agent(self) -> None:
        await self.view.loaded.wait()  # an empty view would stop every adopted instance
        while True:
            changed = self.view.changed
            episode = self.episodes["instances"]
            if not self.fenced:
                try:
                    await self._reconcile()
                    episode.ok()
                except EXPECTED as exc:
                    episode.failed(exc)
                    with anyio.move_on_after(episode.next_delay()):  # or at the next change
                        await changed.wait()
                    continue
            await changed.wait()

    async def _reconcile(self) -> None:
        async with self._act:
            wanted = self._wanted()
            for name in set(self.running) | set(await self._local_names()):
                if name not in wanted or wanted[name][1] != self.running.get(name):
                    await self._remove(name)
                    self.running.pop(name, None)
            self._save()
            await self._release_drained()
            failed: list[str] = []  # one instance the daemon refuses does not hold back the others
            for name, (service, token) in wanted.items():
                if self.fenced:
                    return  # the fence came while we were busy: start nothing more
                if name in self.running:
                    continue
                try:
                    await self._start(name, service, token)
                except HiveError as exc:
                    failed.append(f"{name}: {exc}")
                    continue
                self.running[name] = token
                self._save()
            if failed:
                raise HiveError("; ".join(failed))

    async def _local_names(self) -> list[str]:
        try:
            return [info.name for info in await self.client.list_services(self.settings.source) if "#" not in info.fqn]
        except NotFound:
            return []  # no fleet source yet

    async def _live_names(self) -> set[str]:
        """The fleet instances here whose process runs (adopted at the daemon's start)."""
        try:
            infos = await self.client.list_services(self.settings.source)
        except NotFound:
            return set()
        return {info.name for info in infos if "#" not in info.fqn and info.state in _LIVE}

    async def _ensure_source(self) -> None:
        """The fleet source, owned by this plugin: after a daemon restart the daemon adopts
        its instances that still run and starts none (that is ``_register``'s to decide).
        A source an older version added without an owner gets one."""
        if self._source_ready:
            return
        source = self.settings.source
        known = {s.name: s for s in await self.client.list_sources()}
        if source not in known or known[source].owner != self.name:
            path = known[source].path if source in known else Path((await self.client.status()).home or ".") / f"{source}.db"
            await self.client.add_source(path, name=source, owner=self.name)
        self._source_ready = True

    async def _start(self, name: str, service: FleetService, token: int) -> None:
        await self._ensure_source()
        config = json.loads(json.dumps(service.config))
        environment = config.setdefault("environment", {})
        static = environment.setdefault("static", {})
        static.update(HIVE_FLEET_TOKEN=str(token), HIVE_FLEET_INSTANCE=name, HIVE_FLEET_HIVE=self.hive_id)
        await self.client.create_service(self.settings.source, name, config, start=False)
        await self.client.start_service(f"{self.settings.source}:{name}")
        log.info("fleet: started %s (token %d)", name, token)

    async def _remove(self, name: str, failed: list[str] | None = None) -> None:
        """Stop and delete one instance; one already gone is fine. Other daemon errors are
        raised, or, with ``failed``, noted there (a fence stops the others all the same)."""
        fqn = f"{self.settings.source}:{name}"
        try:
            await self.client.stop_service(fqn)
            await self.client.delete_service(fqn)
        except NotFound:
            return
        except HiveError as exc:
            if failed is None:
                raise
            log.warning("fleet: stopping %s: %s", fqn, exc)
            failed.append(name)

    # --- commands -----------------------------------------------------------------------

    async def call(self, command: str, args: dict[str, Any]) -> Any:
        if command in ("grant", "revoke", "auth-enable"):
            return await self._access(command, args)
        try:
            if command == "apply":
                return await commands.apply(self.etcd, self.keys, args)
            if command == "delete":
                return await commands.delete(self.etcd, self.keys, args)
            if command == "rebalance":
                return await commands.rebalance(self.etcd, self.keys, self.view, args)
            if command == "place":
                return await commands.place(self.etcd, self.keys, self.view, self.settings.source, args)
            if command == "status":
                return self._status()
        except EtcdError as exc:
            raise PluginCallError(f"etcd: {exc}; check the endpoints in [plugins.fleet.settings]") from None
        raise PluginCallError(f"unknown command {command!r} "
                              "(apply, auth-enable, delete, grant, place, rebalance, revoke, status)")

    async def _access(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """etcd's users and roles, as etcd's root (a separate client: this hive's own user
        may not manage them, and its own client may be refused while its user is missing)."""
        try:
            request = msgspec.convert(args, access.AccessRequest)
        except msgspec.ValidationError as exc:
            raise PluginCallError(f"invalid {command} request: {exc}") from None
        async with access.connect(self.settings, self.tls, request) as (etcd, auth):
            if command == "grant":
                result = await access.grant(etcd, self.keys.prefix, request)
            elif command == "revoke":
                result = await access.revoke(etcd, self.keys.prefix, request)
            else:
                result = await access.enable_auth(etcd, auth, self.keys.prefix, request)
                auth = True
        return {**result, "auth": auth, "prefix": self.keys.prefix}

    def _status(self) -> dict[str, Any]:
        view = self.view
        return {
            "hive_id": self.hive_id, "lease": self.lease, "fenced": self.fenced, "revision": view.revision,
            "leader": view.leader[0] if view.leader else None,
            "hives": {name: msgspec.to_builtins(hive) for name, hive in view.hives.items()},
            "services": {name: msgspec.to_builtins(service) for name, service in view.services.items()},
            "assignments": {f"{name}-{index}": {"hive_id": placed.assignment.hive_id, "token": placed.token,
                                                "draining": placed.assignment.drain}
                            for (name, index), placed in sorted(view.assignments.items())},
            "running_here": dict(self.running),
            "fences": self.fences,
            "problems": {episode.what: {"error": episode.error, "failures": episode.failures}
                         for episode in self.episodes.values() if episode.open},
        }
