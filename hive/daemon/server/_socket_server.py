"""The listening socket: accept, check the peer, refuse or serve each connection."""

from __future__ import annotations

import grp
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from hive_client import ErrorCode

from ..allocator import Trimmer
from ..client_limits import AcceptBackoff, ClientBudget, ReportsPerUid, descriptors_left
from ..dispatch import Scope
from ._connection import Connection
from ._dispatch import Dispatcher
from ._peer import Peer, groups_of, peer_of
from ._rate_limit import RateLimit
from ._raw_stream import RawStream, linger
from ._transports import Transports

if TYPE_CHECKING:
    from ..app import App

__all__ = ["SocketServer"]

log = logging.getLogger("hive.server")

_REFUSAL_READ_TIMEOUT = 1.0


class SocketServer:
    """The daemon's socket: each client it accepts (or core plugin it is given) is
    served in a task of its own, until the client hangs up."""

    def __init__(self, app: App, sock: socket.socket, *, max_frame: int, max_inflight: int) -> None:
        self.app = app
        self.secrets = app.sources.secrets  # hidden in every frame sent (redaction.py)
        self._sock = sock
        self._connection_ids = itertools.count(1)
        self.connections: set[Connection] = set()
        self._allowed_gid: int | None = None
        group = app.settings.daemon.allowed_group
        if group:
            self._allowed_gid = grp.getgrnam(group).gr_gid
        self._uid = os.geteuid()
        self._connections: anyio.abc.TaskGroup | None = None
        daemon = app.settings.daemon
        # What clients held goes back to the system once they released it (allocator.py).
        self.trimmer = Trimmer()
        self.budget = ClientBudget(daemon.client_backlog_bytes, daemon.clients_backlog_total_bytes,
                                   drained=self._drained)
        self._per_uid: dict[int, int] = {}  # connections of each (limited) uid
        self._refusals = ReportsPerUid()
        self.dispatcher = Dispatcher(app)
        self.transports = Transports(app, self.dispatcher, max_frame=max_frame, max_inflight=max_inflight)
        self._last_turned_away_log = -60.0
        self._turned_away = 0

    def _drained(self) -> None:
        if self._connections is not None:
            self.trimmer.request(self._connections)

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
        """Run a task for a connection in the server's task group (it outlives the request)."""
        assert self._connections is not None, "start_soon() before serve() started"
        self._connections.start_soon(func, *args)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = self._sock
        listener.setblocking(False)
        async with anyio.create_task_group() as connections:
            self._connections = connections
            task_status.started()
            backoff = AcceptBackoff()
            while True:
                await anyio.wait_readable(listener)
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:
                    # EMFILE and the like: back off (logged once per episode), keep serving.
                    await anyio.sleep(backoff.failed(exc))  # wait-ok: back off after EMFILE and the like
                    continue
                backoff.succeeded()
                if descriptors_left() < self.app.settings.daemon.reserved_fds:
                    # What is left is supervision's: a service start must not fail for a client.
                    self._turn_away_now(client)
                    continue
                connections.start_soon(self._serve_connection, client)

    def _turn_away_now(self, client: socket.socket) -> None:
        """Close a client at once (descriptors are short): no read, no linger."""
        now = time.monotonic()
        if now - self._last_turned_away_log >= 60.0:
            log.warning("turned away a client: fewer than daemon.reserved_fds (%d) descriptors left "
                        "(%d turned away since the last report)", self.app.settings.daemon.reserved_fds,
                        self._turned_away + 1)
            self._last_turned_away_log, self._turned_away = now, 0
        else:
            self._turned_away += 1
        client.close()

    async def drain(self) -> None:
        """Wait until every answer in flight is sent and every stream has ended.

        At shutdown the bus is closed first, so streams end once they delivered the
        last events; a client's ``shutdown`` request gets its answer this way too.
        """
        await self.dispatcher.drain()

    # --- per connection -----------------------------------------------------------------

    def _allowed(self, peer: Peer) -> bool:
        if peer.uid in (self._uid, 0):
            return True
        if self._allowed_gid is None:
            return False
        return peer.gid == self._allowed_gid or self._allowed_gid in groups_of(peer.uid)

    def _runs_plugin_code(self, pid: int) -> bool:
        plugins = self.app.plugins
        return pid == os.getpid() or (plugins is not None and pid in plugins.pids())

    def attach(self, sock: socket.socket, *, plugin: str, scope: Scope, max_rate: float = 0.0) -> None:
        """Serve one end of a socket pair as a client limited to ``scope`` and, if
        ``max_rate`` > 0, to that many requests a second (a core plugin's connection:
        the same protocol as any client, no back door)."""
        assert self._connections is not None, "attach() before serve() started"
        limit = RateLimit(max_rate, burst=max_rate) if max_rate > 0 else None
        self._connections.start_soon(self._serve_connection, sock, scope, plugin, limit)

    async def _serve_connection(self, sock: socket.socket, scope: Scope = "admin", plugin: str | None = None,
                                limit: RateLimit | None = None) -> None:
        stream = RawStream(sock)
        try:
            await self._serve_stream(stream, scope, plugin, limit)
        finally:
            stream.close()

    async def _serve_stream(self, stream: RawStream, scope: Scope, plugin: str | None,
                            limit: RateLimit | None) -> None:
        try:
            peer = peer_of(stream.raw)
        except OSError:
            return
        label = f"plugin {plugin!r}" if plugin else ""
        if plugin is None and peer.uid not in (self._uid, 0):
            # A member of the allowed group (anyone else is refused just below).
            scope = self.app.settings.daemon.group_scope
            label = f"uid {peer.uid}"
        connection = Connection(self, stream, peer, scope, label)
        connection.limit = limit
        connection.plugin = plugin
        if not self._allowed(peer):
            connection.backlog.close()
            await self._refuse(connection, stream)
            return
        if plugin is None and self._runs_plugin_code(peer.pid):
            # Only core plugins run code in the daemon's process and their own: a plugin
            # is not to shed its scope by connecting to the socket as an admin
            # (docs/plugins.md, Trust).
            connection.backlog.close()
            await self._refuse(connection, stream, ErrorCode.FORBIDDEN,
                               "a connection from a core plugin's process is refused: a core plugin "
                               "uses the client it is given, limited to its scope")
            return
        limited = plugin is None and peer.uid not in (self._uid, 0)
        if limited and self._per_uid.get(peer.uid, 0) >= self.app.settings.daemon.max_connections_per_uid:
            connection.backlog.close()
            most = self.app.settings.daemon.max_connections_per_uid
            await self._refuse(connection, stream, ErrorCode.LIMIT_EXCEEDED,
                               f"uid {peer.uid} has {most} connections open, the limit "
                               "(daemon.max_connections_per_uid); close some and try again")
            return
        if limited:
            self._per_uid[peer.uid] = self._per_uid.get(peer.uid, 0) + 1
        self.connections.add(connection)
        try:
            await self.transports.serve(connection, stream)
        finally:
            connection.closed = True
            connection.backlog.close()
            self.connections.discard(connection)
            if limited:
                left = self._per_uid[peer.uid] - 1
                if left:
                    self._per_uid[peer.uid] = left
                else:
                    del self._per_uid[peer.uid]

    async def _refuse(self, connection: Connection, stream: RawStream,
                      code: ErrorCode = ErrorCode.PERMISSION_DENIED, message: str = "") -> None:
        message = message or f"uid {connection.peer.uid} may not use this daemon (it belongs to uid {self._uid})"
        unreported = self._refusals.report(connection.peer.uid)
        if unreported is not None:
            more = f" ({unreported} more refused since the last report)" if unreported else ""
            log.warning("refused a connection from uid %d (pid %d): %s%s",
                        connection.peer.uid, connection.peer.pid, message, more)
        # Answer in the client's own transport if it says something quickly.
        with anyio.move_on_after(_REFUSAL_READ_TIMEOUT):
            try:
                connection.json = (await stream.receive(1)) == b"{"
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
        await connection.send_error(0, code, message)
        await linger(stream)
