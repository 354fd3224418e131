"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), through httpx.

Why the gateway and httpx rather than gRPC (aetcd): httpx runs on anyio, so the client
lives in the daemon's event loop whatever its backend, with per-request timeouts that
cancel cleanly; the gateway ships with every etcd 3.x (Debian's 3.4 included) and the few
calls the fleet needs (range, txn, lease grant/keepalive/time-to-live, watch) map to one
POST each. grpcio would bring a second I/O engine into the daemon's process.

Fail-over: the client holds a list of member URLs and talks to one at a time. A request
that cannot connect or times out (``request_timeout``, short: a second) moves to the next
member and is retried there, each member once per call; only then does the call fail
with ``EtcdUnavailable``. Each switch cancels the streams of the watches, so a watch on the
old member (a long-lived stream that no timeout covers) moves too.

Watches resume from the last revision they delivered, on whatever member answers; a
revision etcd has compacted away raises ``WatchCompacted`` and the caller reloads.

With ``credentials``, the client authenticates once and sends etcd's token; a token
refused is renewed. While etcd's authentication is off it sends none, and authenticates
at the first refusal once it is on (a hive may get its user before authentication is on).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

__all__ = ["EtcdAuthRequired", "EtcdClient", "EtcdError", "EtcdUnavailable", "KeyValue", "WatchCompacted", "WatchEvent", "absent",
           "b64", "delete_op", "leased_by", "modified_at", "prefix_end", "present", "put_op", "tls_context", "unb64"]

log = logging.getLogger("hive.plugins.fleet.etcd")


class EtcdError(Exception):
    """etcd answered with an error (or something that is not its JSON)."""


class EtcdUnavailable(EtcdError):
    """No member answered within the timeouts."""


class EtcdAuthRequired(EtcdError):
    """etcd has authentication on, and this client has no user to authenticate as."""


# etcd's answers to a request without a valid token (none yet, or one a restarted member
# forgot): authenticate again and retry.
_TOKEN_ERRORS = ("invalid auth token", "user name is empty")
AUTH_OFF = "authentication is not enabled"  # etcd's answer to authenticate while auth is off


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """What httpx verifies etcd's members with (their CA), and presents (a client certificate)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class _TokenRefused(EtcdError):
    """The token sent (``token``) is not (or no longer) valid: authenticate again."""

    def __init__(self, token: str) -> None:
        super().__init__("etcd refused the auth token")
        self.token = token


class WatchCompacted(EtcdError):
    """The revision to resume from is compacted: reload the range, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


def b64(text: str) -> str:
    """A key or value as etcd's JSON gateway carries it."""
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class KeyValue:
    """One key as etcd holds it."""

    __slots__ = ("create_revision", "key", "lease", "mod_revision", "value")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.key = unb64(raw.get("key"))
        self.value = unb64(raw.get("value"))
        self.create_revision = int(raw.get("create_revision", 0))
        self.mod_revision = int(raw.get("mod_revision", 0))
        self.lease = int(raw.get("lease", 0))


class WatchEvent:
    """A put (``kv`` is the new value) or a delete (``kv.value`` is empty)."""

    __slots__ = ("deleted", "kv")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.deleted = raw.get("type") == "DELETE"
        self.kv = KeyValue(raw.get("kv", {}))


def put_op(key: str, value: str, lease: int = 0, *, keep_lease: bool = False) -> dict[str, Any]:
    """A put; ``keep_lease``: the key stays bound to the lease it has (etcd's ignore_lease)."""
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if keep_lease:
        request["ignore_lease"] = True
    elif lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def absent(key: str) -> dict[str, Any]:
    """A compare that holds while ``key`` does not exist."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def present(key: str) -> dict[str, Any]:
    """A compare that holds while ``key`` exists."""
    return {"key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}


def leased_by(key: str, lease: int) -> dict[str, Any]:
    """A compare that holds while ``key`` exists, bound to ``lease``."""
    return {"key": b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def modified_at(key: str, revision: int) -> dict[str, Any]:
    """A compare that holds while ``key`` was last written at ``revision``."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


class EtcdClient:
    def __init__(self, endpoints: list[str], *, request_timeout: float = 1.0, connect_timeout: float = 0.5,
                 credentials: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``credentials``: (user, password) for an etcd with authentication enabled;
        ``tls``: the context for https:// members (see :func:`tls_context`)."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self.current = 0
        self._streams: set[anyio.CancelScope] = set()  # the watches' streams, moved at a switch
        self._timeout = httpx.Timeout(request_timeout, connect=connect_timeout)
        self._http = httpx.AsyncClient(timeout=self._timeout, verify=tls if tls is not None else True)
        self._credentials = credentials
        self._token = ""  # etcd's simple token, valid on every member (it goes through raft)
        # etcd said its authentication is off: requests go without a token until one is
        # refused (auth turned on since), so a hive given its user before runs meanwhile.
        self._auth_off = False
        self._authenticating = anyio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.current]

    def _fail_over(self, failed: int) -> None:
        if self.current == failed and len(self.endpoints) > 1:
            self.current = (failed + 1) % len(self.endpoints)
            log.warning("etcd member %s does not answer; now using %s", self.endpoints[failed], self.endpoint)
        for stream in self._streams:
            stream.cancel()

    async def call(self, path: str, body: dict[str, Any], *, patience: float = 0.0) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the current member, failing over as needed;
        with ``patience``, rounds of every member are tried again for that many seconds
        (a user's command rides out an election, 1-2 s; background loops retry themselves)."""
        deadline = anyio.current_time() + patience
        while True:
            try:
                return await self._call_round(path, body)
            except EtcdUnavailable:
                if anyio.current_time() >= deadline:
                    raise
            await anyio.sleep(0.1)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, stale: str) -> None:
        """A new token, unless another task got one since ``stale`` was refused."""
        if self._credentials is None:
            raise EtcdAuthRequired("etcd wants a user: set username and password_file in [plugins.fleet.settings]")
        async with self._authenticating:
            if self._token != stale or (self._auth_off and not stale):  # another task did it
                return
            name, password = self._credentials
            self._token = ""
            try:
                answer = await self._call_round("auth/authenticate", {"name": name, "password": password})
            except EtcdError as exc:
                if AUTH_OFF not in str(exc):
                    raise
                self._auth_off = True
                return
            self._auth_off = False
            self._token = str(answer.get("token", ""))

    def _needs_token(self) -> bool:
        return self._credentials is not None and not self._token and not self._auth_off

    async def _call_round(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._needs_token() and path != "auth/authenticate":
            await self._authenticate("")
        try:
            return await self._call_members(path, body)
        except _TokenRefused as refused:
            self._auth_off = False
            await self._authenticate(refused.token)
            return await self._call_members(path, body)

    async def _call_members(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for _ in range(len(self.endpoints)):
            index = self.current
            token = self._token
            try:
                response = await self._http.post(f"{self.endpoints[index]}/v3/{path}", json=body,
                                                 headers=self._headers())
            except (httpx.TransportError, OSError) as exc:
                errors.append(f"{self.endpoints[index]}: {type(exc).__name__} {exc}".rstrip())
                self._fail_over(index)
                continue
            try:
                answer: dict[str, Any] = response.json()
            except ValueError:
                raise EtcdError(f"{path}: HTTP {response.status_code}, not JSON: {response.text[:200]}") from None
            if response.status_code != 200 or "error" in answer:
                message = answer.get("message") or answer.get("error") or response.text[:200]
                if response.status_code in (502, 503, 504) or "no leader" in str(message):
                    errors.append(f"{self.endpoints[index]}: {message}")
                    self._fail_over(index)
                    continue
                if any(refusal in str(message) for refusal in _TOKEN_ERRORS) and path != "auth/authenticate":
                    raise _TokenRefused(token)
                raise EtcdError(f"{path}: {message}")
            return answer
        raise EtcdUnavailable("no etcd member answered: " + "; ".join(errors))

    # --- keys -----------------------------------------------------------------------

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(revision, keys) of everything under ``prefix``."""
        answer = await self.call("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return int(answer["header"]["revision"]), [KeyValue(kv) for kv in answer.get("kvs", [])]

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.call("kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return KeyValue(kvs[0]) if kvs else None

    async def put(self, key: str, value: str, lease: int = 0, *, patience: float = 0.0) -> int:
        answer = await self.call("kv/put", put_op(key, value, lease)["request_put"], patience=patience)
        return int(answer["header"]["revision"])

    async def delete(self, key: str, *, patience: float = 0.0) -> int:
        """How many keys it deleted (0 or 1)."""
        answer = await self.call("kv/deleterange", {"key": b64(key)}, patience=patience)
        return int(answer.get("deleted", 0))

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None, *, patience: float = 0.0) -> tuple[bool, int]:
        """(succeeded, revision after it)."""
        answer = await self.call("kv/txn", {"compare": compare, "success": success, "failure": failure or []},
                                 patience=patience)
        return bool(answer.get("succeeded")), int(answer["header"]["revision"])

    # --- leases ---------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        answer = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> int:
        """The lease's TTL after renewing it; 0: it has expired (or never was)."""
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def time_to_live(self, lease: int) -> int:
        """Seconds the lease has left; -1 or 0: it is gone."""
        answer = await self.call("lease/timetolive", {"ID": str(lease)})
        return int(answer.get("TTL", -1))

    async def revoke(self, lease: int) -> None:
        await self.call("lease/revoke", {"ID": str(lease)})

    # --- watch ----------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int,
                           deliver: Callable[[int, list[WatchEvent]], Awaitable[None]]) -> None:
        """Call ``deliver(revision, events)`` for every change from ``start_revision`` on, for ever.

        A member that goes away (its stream ends, fails, or the client switched members
        because another call timed out) is left and the watch resumes from the revision
        after the last one delivered, on the next member.
        """
        next_revision = start_revision
        failures = 0  # in a row; a whole round of members failing is raised as EtcdUnavailable
        while True:
            index = self.current
            if self._needs_token():
                await self._authenticate("")
            token = self._token
            body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                       "start_revision": str(next_revision)}}
            # A cancel scope, not a task group: the errors below reach the caller as they
            # are (a task group would wrap them in an ExceptionGroup no ``except`` here catches).
            with anyio.CancelScope() as stream_scope:
                self._streams.add(stream_scope)
                try:
                    timeout = httpx.Timeout(None, connect=self._timeout.connect)
                    async with self._http.stream("POST", f"{self.endpoints[index]}/v3/watch", json=body,
                                                 timeout=timeout, headers=self._headers()) as response:
                        async for line in response.aiter_lines():
                            if not line.strip():
                                continue
                            try:
                                message = json.loads(line)
                            except ValueError:
                                raise EtcdError(f"watch: not JSON: {line[:200]}") from None
                            if "error" in message:
                                error = str(message["error"].get("message", message["error"])
                                            if isinstance(message["error"], dict) else message["error"])
                                if any(refusal in error for refusal in _TOKEN_ERRORS):
                                    raise _TokenRefused(token)
                                raise EtcdError(f"watch: {error}")
                            result = message.get("result", {})
                            compacted = int(result.get("compact_revision", 0))
                            if compacted:
                                raise WatchCompacted(compacted)
                            if result.get("canceled"):  # refused at its creation: the stream stays open, silent
                                reason = str(result.get("cancel_reason", ""))
                                if any(refusal in reason for refusal in _TOKEN_ERRORS):
                                    raise _TokenRefused(token)
                                raise EtcdError(f"watch: etcd cancelled it: {reason}")
                            failures = 0
                            events = [WatchEvent(raw) for raw in result.get("events", [])]
                            if events:
                                revision = max(event.kv.mod_revision for event in events)
                                await deliver(revision, events)
                                next_revision = revision + 1
                except _TokenRefused as refused:
                    self._auth_off = False
                    await self._authenticate(refused.token)
                    continue
                except (httpx.TransportError, OSError) as exc:  # a member killed mid-stream, refused, reset
                    log.debug("watch on %s ended (%s); resuming from revision %d", self.endpoints[index],
                              exc, next_revision)
                    self._fail_over(index)
                    failures += 1
                    if failures >= len(self.endpoints):
                        raise EtcdUnavailable(f"no etcd member serves the watch: {exc}") from None
                finally:
                    self._streams.discard(stream_scope)
            await anyio.sleep(0.05)  # a member that ends streams at once is not hammered
