"""A container engine's HTTP API over its Unix socket (the Docker Engine API).

httpx over a Unix transport: already a dependency of Hive, on anyio, streams responses
(events, logs) without buffering them, and bounds each request with its own timeout.
An :class:`EngineApi` belongs to the event loop it was made on (httpx's connection pool
does); :func:`api_for` keeps one per socket and loop.

Errors are :class:`runners.base.RunnerError` with the engine's own ``message``:
:class:`ApiError` carries the HTTP status (404: no such thing; 409: a name in use, or not
running), and an engine that cannot be reached is :class:`EngineUnreachable`.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from .base import RunnerError

__all__ = ["ApiError", "EngineApi", "EngineUnreachable", "Starter", "api_for", "filters", "socket_path"]

# What starts an engine that does not answer (podman's API service); RunnerError if it cannot.
Starter = Callable[[], Awaitable[None]]

# Deadline of one request (a pull or a stop is given its own).
CALL_TIMEOUT = 60.0
DEFAULT_SOCKET = "/var/run/docker.sock"
# How long an engine gets to answer a fresh connection before it is taken as going away.
FRESH_TIMEOUT = 1.0


class EngineUnreachable(RunnerError):
    """The engine's daemon cannot be reached (not running, restarting, wrong socket)."""


class ApiError(RunnerError):
    """The engine answered with an error: ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def socket_path(socket: str | None, default: str | None = None) -> str:
    """The Unix socket path of ``socket`` (a path or ``unix://`` URL; None: ``default``, else
    ``DOCKER_HOST`` if it names a Unix socket, else Docker's default); RunnerError for
    another kind of URL."""
    if not socket:
        host = os.environ.get("DOCKER_HOST", "")
        socket = default or (host if host.startswith("unix://") else DEFAULT_SOCKET)
    if socket.startswith("unix://"):
        return socket[len("unix://"):]
    if "://" in socket:
        raise RunnerError(f"engine socket {socket!r}: only a Unix socket (a path or unix://PATH) is supported")
    return socket


class EngineApi:
    """Requests to one engine socket, for the loop this was made on. With a ``starter``,
    a connection refused (or no socket) starts the engine, and the request is made again."""

    def __init__(self, path: str, display: str, starter: Starter | None = None) -> None:
        self.path = path
        self.display = display
        self.starter = starter
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path), base_url="http://engine",
            timeout=httpx.Timeout(CALL_TIMEOUT, connect=5.0),
        )

    def unreachable(self, exc: BaseException | str) -> EngineUnreachable:
        reason = str(exc) or type(exc).__name__
        return EngineUnreachable(f"cannot reach the {self.display} engine at {self.path}: {reason}")

    async def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
        body: Any = None, timeout: float | None = CALL_TIMEOUT,
    ) -> Any:
        """The decoded JSON answer (None when there is no body); ApiError for an error
        status, EngineUnreachable when the engine does not answer."""
        try:
            try:
                response = await self._client.request(
                    method, path, params=params, json=body, timeout=httpx.Timeout(timeout, connect=5.0),
                )
            except httpx.ConnectError:
                if self.starter is None:
                    raise
                await self._start()
                response = await self._client.request(
                    method, path, params=params, json=body, timeout=httpx.Timeout(timeout, connect=5.0),
                )
        except httpx.TimeoutException:
            raise RunnerError(f"the {self.display} engine did not answer {method} {path} "
                              f"within {timeout or 0:.0f} s") from None
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise ApiError(_message(response.content), response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    @asynccontextmanager
    async def stream(
        self, path: str, params: Mapping[str, Any] | None = None, *, method: str = "GET", body: Any = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streaming request (events, logs, an exec's output): no read deadline, the
        engine ends it."""
        started = self.starter is None
        while True:
            yielded = False
            try:
                async with self._client.stream(
                    method, path, params=params, json=body, timeout=httpx.Timeout(None, connect=5.0)
                ) as response:
                    if response.status_code >= 400:
                        raise ApiError(_message(await response.aread()), response.status_code)
                    yielded = True
                    yield response
                    return
            except httpx.ConnectError as exc:
                if yielded or started:
                    raise self.unreachable(exc) from None
            except httpx.TransportError as exc:
                raise self.unreachable(exc) from None
            started = True
            await self._start()

    async def answers_now(self, timeout: float = FRESH_TIMEOUT) -> bool:
        """Whether the engine answers ``GET /_ping`` on a connection of its own (not one of
        the pool's, which an engine shutting down may still serve) within ``timeout``.
        dockerd removes its socket as its shutdown begins, before it stops a container;
        under socket activation (``fd://``) the socket stays but nothing accepts."""
        try:
            with anyio.fail_after(timeout):
                async with await anyio.connect_unix(self.path) as stream:
                    await stream.send(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
                    return (await stream.receive()).startswith(b"HTTP/1.")
        except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False

    async def _start(self) -> None:
        assert self.starter is not None
        try:
            await self.starter()
        except RunnerError as exc:
            raise self.unreachable(exc) from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _message(content: bytes) -> str:
    """The engine's ``message`` of an error answer, on one line."""
    try:
        decoded = json.loads(content)
        text = str(decoded.get("message") or "") if isinstance(decoded, dict) else ""
    except ValueError:
        text = ""
    text = text or content.decode(errors="replace").strip() or "no error message"
    return " ".join(text.split())


# One client per (socket, loop): a loop that ends takes its clients with it.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, EngineApi]] = weakref.WeakKeyDictionary()


def api_for(path: str, display: str, starter: Starter | None = None) -> EngineApi:
    """The client of the engine at ``path`` for the running loop."""
    loop = asyncio.get_running_loop()
    clients = _CLIENTS.setdefault(loop, {})
    api = clients.get(path)
    if api is None:
        api = clients[path] = EngineApi(path, display, starter)
    return api


def filters(**values: list[str]) -> dict[str, str]:
    """The ``filters`` query parameter: ``{"label": ["a=b"]}`` as JSON."""
    return {"filters": json.dumps(values)}
