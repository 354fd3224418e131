"""`hive fleet grant|revoke|auth enable`: the etcd users and roles of :mod:`.roles`, made
through etcd's JSON gateway (``/v3/auth/...``) as etcd's root user.

Each converges: it reads what etcd has, then adds what is missing and takes away what
is no longer wanted, and answers with the list of what it changed (empty: nothing to
do). A hive's user keeps the password it has unless ``reset_password`` asks for a new
one. Only the roles of this hive are touched: ``fleet-hive-<id>``, ``fleet-scheduler``
and ``fleet-admin``; roles given by hand stay.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from hive.plugin import PluginCallError

from .commands import COMMAND_PATIENCE
from .etcd import (
    AUTH_OFF,
    EtcdAuthRequired,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    b64,
    delete_op,
    modified_at,
    unb64,
)
from .model import NAME_PATTERN, FleetSettings, Keys
from .roles import Grant, grants

__all__ = ["AccessRequest", "connect", "enable_auth", "grant", "revoke"]

_SHARED_ROLES = ("fleet-scheduler", "fleet-admin")
_NOT_FOUND = ("user name not found", "role name not found")
_EXISTS = ("user name already exists", "role name already exists")
# Per request: etcd hashes passwords with bcrypt, slow on a busy machine; a user's
# command may wait (a timed-out add retried would find the user there already).
_REQUEST_TIMEOUT = 5.0
_BAD_PASSWORD = "authentication failed"


class AccessRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the CLI sends: the hive, its roles, its password, and etcd's root."""

    hive_id: str = ""
    scheduler: bool = False
    admin: bool = False
    password: str = ""  # the hive's; "" leaves an existing user's as it is
    reset_password: bool = False  # set ``password`` on a user that exists
    root_user: str = "root"
    root_password: str = ""  # "": etcd's authentication is expected to be off

    def check_hive(self) -> str:
        if not NAME_PATTERN.match(self.hive_id) or self.hive_id == "root":
            raise PluginCallError(f"hive id {self.hive_id!r}: lower-case letters, digits, _ and - "
                                  "(the fleet's hive_id), and not etcd's `root`")
        return self.hive_id


@asynccontextmanager
async def connect(settings: FleetSettings, tls: ssl.SSLContext | None,
                  request: AccessRequest) -> AsyncIterator[tuple[EtcdClient, bool]]:
    """(a client as etcd's root, whether etcd's authentication is on); etcd's answers
    turned into errors that say what to do."""
    timeout = max(settings.request_timeout, _REQUEST_TIMEOUT)
    plain = EtcdClient(settings.endpoints, request_timeout=timeout,
                       connect_timeout=min(0.5, settings.request_timeout), tls=tls)
    etcd, auth = plain, False
    try:
        if request.root_password:
            auth = await _root_checked(plain, request)
            if auth:
                etcd = EtcdClient(settings.endpoints, request_timeout=timeout,
                                  connect_timeout=min(0.5, settings.request_timeout), tls=tls,
                                  credentials=(request.root_user, request.root_password))
        yield etcd, auth
    except EtcdAuthRequired:
        raise PluginCallError("etcd's authentication is on: give etcd's root password with "
                              "--root-password-file FILE") from None
    except EtcdUnavailable as exc:
        raise PluginCallError(f"{exc}; check that etcd runs and the endpoints in [plugins.fleet.settings]") from None
    except EtcdError as exc:
        if "permission denied" in str(exc):
            raise PluginCallError(f"etcd: user {request.root_user!r} may not manage users and roles "
                                  "(it needs etcd's root role): use etcd's root user") from None
        raise PluginCallError(f"etcd: {exc}") from None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):  # a cancelled call still closes
            await plain.aclose()
            if etcd is not plain:
                await etcd.aclose()


async def _root_checked(etcd: EtcdClient, request: AccessRequest) -> bool:
    """Whether etcd's authentication is on, once root's password is known to be right."""
    try:
        await etcd.call("auth/authenticate", {"name": request.root_user, "password": request.root_password},
                        patience=COMMAND_PATIENCE)
    except EtcdUnavailable:
        raise
    except EtcdError as exc:
        if AUTH_OFF in str(exc):
            return False
        if _BAD_PASSWORD in str(exc):
            raise PluginCallError(f"etcd refused the password of its user {request.root_user!r}: check the file "
                                  "given with --root-password-file (its first line is the password)") from None
        raise
    return True


async def _optional(etcd: EtcdClient, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """etcd's answer, or None for a user or role that does not exist."""
    try:
        return await etcd.call(path, body, patience=COMMAND_PATIENCE)
    except EtcdError as exc:
        if any(missing in str(exc) for missing in _NOT_FOUND):
            return None
        raise


async def _add(etcd: EtcdClient, path: str, body: dict[str, Any], *, done: tuple[str, ...] = _EXISTS) -> None:
    """Add what was found missing just before (or revoke what was there): etcd's answer
    that it is done already means this request's first try (a retry after a timeout) or
    someone at the same moment did it."""
    try:
        await etcd.call(path, body, patience=COMMAND_PATIENCE)
    except EtcdError as exc:
        if not any(already in str(exc) for already in done):
            raise


def _perm(grant: Grant) -> dict[str, str]:
    perm = {"permType": grant.access, "key": b64(grant.key)}
    if grant.range_end:
        perm["range_end"] = b64(grant.range_end)
    return perm


def _held(raw: dict[str, Any]) -> tuple[str, str, str]:
    """(access, key, range end) of a permission as etcd's role/get lists it (READ, 0, is left out)."""
    return str(raw.get("permType", "READ")), unb64(raw.get("key", "")), unb64(raw.get("range_end", ""))


def _describe(grant: Grant) -> str:
    where = f"{grant.key}*" if grant.range_end else grant.key
    return f"{grant.access.lower()} {where}"


async def grant(etcd: EtcdClient, prefix: str, request: AccessRequest) -> dict[str, Any]:
    """The hive's user, its roles with their permissions, and exactly the wanted ones of
    this hive's roles given to it."""
    hive_id = request.check_hive()
    patience = COMMAND_PATIENCE
    changes: list[str] = []
    user = await _optional(etcd, "auth/user/get", {"name": hive_id})
    if user is None:
        if not request.password:
            raise PluginCallError(f"user {hive_id!r} does not exist: a new user needs a password")
        await _add(etcd, "auth/user/add", {"name": hive_id, "password": request.password})
        changes.append(f"created user {hive_id}")
        password = "set"
    elif request.reset_password and request.password:
        await etcd.call("auth/user/changepw", {"name": hive_id, "password": request.password}, patience=patience)
        changes.append(f"changed the password of user {hive_id}")
        password = "set"
    else:
        password = "kept"
    wanted = grants(prefix, hive_id, scheduler=request.scheduler, admin=request.admin)
    roles = sorted({item.role for item in wanted})
    for role in roles:
        found = await _optional(etcd, "auth/role/get", {"role": role})
        if found is None:
            await _add(etcd, "auth/role/add", {"name": role})
            changes.append(f"created role {role}")
        held = {_held(raw) for raw in (found or {}).get("perm", [])}
        for item in wanted:
            if item.role == role and (item.access, item.key, item.range_end) not in held:
                await etcd.call("auth/role/grant", {"name": role, "perm": _perm(item)}, patience=patience)
                changes.append(f"role {role} may {_describe(item)}")
    has = set((user or {}).get("roles", []))
    for role in roles:
        if role not in has:
            await etcd.call("auth/user/grant", {"user": hive_id, "role": role}, patience=patience)
            changes.append(f"gave role {role} to {hive_id}")
    for role in _SHARED_ROLES:
        if role in has and role not in roles:
            await _add(etcd, "auth/user/revoke", {"name": hive_id, "role": role}, done=("role is not granted",))
            changes.append(f"took role {role} from {hive_id}")
    if not request.scheduler:
        changes += await _unseat(etcd, Keys(prefix), hive_id)
    return {"hive_id": hive_id, "user": "created" if user is None else "kept", "password": password,
            "roles": roles, "changes": changes}


async def _unseat(etcd: EtcdClient, keys: Keys, hive_id: str) -> list[str]:
    """A hive that may no longer lead but holds the leader key (bound to its lease, which
    it keeps renewing) would stop placement for good: the key is deleted, another
    scheduler hive takes it."""
    leader = await etcd.get(keys.leader)
    if leader is None or leader.value != hive_id:
        return []
    done, _ = await etcd.txn([modified_at(keys.leader, leader.mod_revision)], [delete_op(keys.leader)],
                             patience=COMMAND_PATIENCE)
    return [f"{hive_id} led placement: deleted the leader key (another scheduler hive takes it)"] if done else []


async def revoke(etcd: EtcdClient, prefix: str, request: AccessRequest) -> dict[str, Any]:
    """The hive's user and its own role deleted (the shared roles stay, for other hives),
    the leader key if it holds it, and its lease once it runs no fleet instance.

    etcd 3.4 renews a lease without checking its user, so a revoked hive keeps its lease,
    and its assignments with it. Revoking that lease while it runs instances would let the
    leader start them elsewhere before the hive has stopped them (its fencing counts on the
    lease running out, not on a revoke): those stay, named, until they have stopped there
    (``hive fleet delete``, or its daemon stopping them); revoke again then."""
    hive_id = request.check_hive()
    keys = Keys(prefix)
    changes = []
    if await _optional(etcd, "auth/user/delete", {"name": hive_id}) is not None:
        changes.append(f"deleted user {hive_id}")
    own = f"fleet-hive-{hive_id}"
    if await _optional(etcd, "auth/role/delete", {"role": own}) is not None:
        changes.append(f"deleted role {own}")
    changes += await _unseat(etcd, keys, hive_id)
    record = await etcd.get(keys.hive(hive_id))
    running = []
    if record is not None and record.lease:
        _, assigned = await etcd.range_prefix(keys.assign)
        running = sorted(f"{kv.key.removeprefix(keys.assign).replace('/', '-')}" for kv in assigned
                         if kv.lease == record.lease)
        if not running:
            try:
                await etcd.call("lease/revoke", {"ID": str(record.lease)}, patience=COMMAND_PATIENCE)
            except EtcdError as exc:
                if "lease not found" not in str(exc):
                    raise
            else:
                changes.append(f"revoked the lease {record.lease:x} of {hive_id} (its record with it)")
    return {"hive_id": hive_id, "changes": changes, "still_running": running}


async def enable_auth(etcd: EtcdClient, auth: bool, prefix: str, request: AccessRequest) -> dict[str, Any]:
    """etcd's root user (created with ``root_password``, or given it if it exists), then
    authentication on; the fleet's hives that have no user (refused from then on) are
    named. Already on (and the password right): nothing to do."""
    if auth:
        return {"changes": [], "without_user": []}
    if request.root_user != "root" or not request.root_password:
        raise PluginCallError("turning etcd's authentication on needs its user `root` and a password for it: "
                              "give --root-password-file FILE")
    patience = COMMAND_PATIENCE
    changes = []
    root = await _optional(etcd, "auth/user/get", {"name": "root"})
    if root is None:
        await _add(etcd, "auth/user/add", {"name": "root", "password": request.root_password})
        changes.append("created user root")
    else:  # authentication is off: nobody could check its password; it becomes the file's
        await etcd.call("auth/user/changepw", {"name": "root", "password": request.root_password}, patience=patience)
        changes.append("set the password of user root")
    if "root" not in (root or {}).get("roles", []):
        await etcd.call("auth/user/grant", {"user": "root", "role": "root"}, patience=patience)
        changes.append("gave role root to root")
    users = set((await etcd.call("auth/user/list", {}, patience=patience)).get("users", []))
    keys = Keys(prefix)
    _, records = await etcd.range_prefix(keys.hives)
    without = sorted({kv.key.removeprefix(keys.hives) for kv in records} - users)
    await etcd.call("auth/enable", {}, patience=patience)
    changes.append("turned authentication on")
    return {"changes": changes, "without_user": without}
