"""Real peers for the health-check tests: an HTTP server child process, TCP listeners, a pid
reporter; a recorder of a monitor's callbacks; builders of check specs."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import msgspec
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hive.config import CmdCheck, HealthCheckSpec, HttpCheck, TcpCheck
from hive.daemon.health import HealthMonitor
from hive_client import HealthCheckResult
from runners.base import CheckExec

DEADLINE = 15.0  # generous: only a broken implementation (or a hung one) gets near it
FAST = 0.05  # check interval in the tests

# ---- specs ---------------------------------------------------------------------------------


def http_check(
    port: int | str,
    *,
    path: str = "/health",
    method: Literal["GET", "HEAD", "POST"] = "GET",
    status: int | None = None,
    interval: float = FAST,
    timeout: float = 5.0,
    retries: int = 3,
    start_period: float = 0.0,
) -> HealthCheckSpec:
    block = HttpCheck(port=str(port), path=path, method=method, status=status, interval=interval,
                      timeout=timeout, retries=retries, start_period=start_period)
    return HealthCheckSpec(type="http", config=msgspec.to_builtins(block), interval=interval,
                           timeout=timeout, retries=retries, start_period=start_period, http=block)


def tcp_check(
    port: int | str, *, interval: float = FAST, timeout: float = 5.0, retries: int = 3
) -> HealthCheckSpec:
    block = TcpCheck(port=str(port), interval=interval, timeout=timeout, retries=retries)
    return HealthCheckSpec(type="tcp", config=msgspec.to_builtins(block), interval=interval,
                           timeout=timeout, retries=retries, tcp=block)


def cmd_check(
    command: str,
    *,
    working_dir: str | Path = "/",
    interval: float = FAST,
    timeout: float = 5.0,
    retries: int = 3,
    start_period: float = 0.0,
) -> HealthCheckSpec:
    block = CmdCheck(command=command, working_dir=str(working_dir), interval=interval,
                     timeout=timeout, retries=retries, start_period=start_period)
    return HealthCheckSpec(type="cmd", config=msgspec.to_builtins(block), interval=interval,
                           timeout=timeout, retries=retries, start_period=start_period, cmd=block)


# ---- recording a monitor -------------------------------------------------------------------


@dataclass
class Change:
    healthy: bool
    message: str
    results: list[HealthCheckResult]  # monitor.results() at the moment of the callback


Event = Change | HealthCheckResult


@dataclass
class Recorder:
    """Every on_result / on_change call of one monitor, in order, as one stream of events."""

    changes: list[Change] = field(default_factory=list)
    results: list[HealthCheckResult] = field(default_factory=list)
    monitor: HealthMonitor | None = None
    _send: MemoryObjectSendStream[Event] = field(init=False)
    _receive: MemoryObjectReceiveStream[Event] = field(init=False)

    def __post_init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Event](math.inf)

    def on_change(self, healthy: bool, message: str) -> None:
        assert self.monitor is not None
        change = Change(healthy, message, self.monitor.results())
        self.changes.append(change)
        self._send.send_nowait(change)

    def on_result(self, result: HealthCheckResult) -> None:
        self.results.append(result)
        self._send.send_nowait(result)

    async def next_change(self) -> tuple[Change, list[HealthCheckResult]]:
        """The next verdict change, and the results reported since the previous call."""
        seen: list[HealthCheckResult] = []
        with anyio.fail_after(DEADLINE):
            async for event in self._receive:
                if isinstance(event, Change):
                    return event, seen
                seen.append(event)
        raise AssertionError("the recorder closed")

    async def wait_results(
        self, predicate: Callable[[HealthCheckResult], bool], count: int = 1
    ) -> list[HealthCheckResult]:
        """Consume events until ``count`` results match; fails if the verdict changes first."""
        matched: list[HealthCheckResult] = []
        with anyio.fail_after(DEADLINE):
            async for event in self._receive:
                if isinstance(event, Change):
                    raise AssertionError(f"unexpected verdict change: {event}")
                if predicate(event):
                    matched.append(event)
                    if len(matched) == count:
                        return matched
        raise AssertionError("the recorder closed")


def make_monitor(
    checks: list[HealthCheckSpec],
    *,
    ports: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
    exec_check: CheckExec | None = None,
) -> tuple[HealthMonitor, Recorder]:
    recorder = Recorder()
    monitor = HealthMonitor(
        "proj:web",
        checks,
        ports=ports or {},
        env=dict(os.environ) if env is None else env,
        on_change=recorder.on_change,
        on_result=recorder.on_result,
        exec_check=exec_check,
    )
    recorder.monitor = monitor
    return monitor, recorder


@asynccontextmanager
async def running(monitor: HealthMonitor) -> AsyncIterator[None]:
    """Run the monitor for the body of the block, then cancel it (as the daemon will)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        yield
        tg.cancel_scope.cancel()


# ---- an HTTP server child process ------------------------------------------------------------

# Answers per request as the mode file says: a status code (default 200), "hang" (never answers),
# "close" (hangs up without an answer), "garbage" (not HTTP), "early" (103 then 200).
# Prints one line per request: METHOD PATH STATUS host=… length=… connection=…
SERVER_SCRIPT = r'''
import http.server, sys, threading

MODE = sys.argv[1]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        try:
            with open(MODE) as f:
                mode = f.read().strip() or "200"
        except FileNotFoundError:
            mode = "200"
        print(f"{self.command} {self.path} {mode} host={self.headers.get('Host')} "
              f"length={self.headers.get('Content-Length')} "
              f"connection={self.headers.get('Connection')}", flush=True)
        if mode == "hang":
            threading.Event().wait()
        if mode == "close":
            self.close_connection = True
            return
        if mode == "garbage":
            self.wfile.write(b"hello\r\n\r\n")
            self.close_connection = True
            return
        if mode == "early":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            mode = "200"
        body = b"ok\n"
        self.send_response(int(mode))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = answer

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
'''


class HttpServer:
    def __init__(self, process: anyio.abc.Process, port: int, mode_file: Path) -> None:
        self.process = process
        self.port = port
        self._mode_file = mode_file
        self.requests: list[str] = []

    def set_mode(self, mode: str) -> None:
        """Every request that starts after this call gets the new behaviour."""
        tmp = self._mode_file.with_suffix(".tmp")
        tmp.write_text(mode)
        os.replace(tmp, self._mode_file)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(DEADLINE):
            await self.process.wait()


@asynccontextmanager
async def http_server(directory: Path, mode: str = "200") -> AsyncIterator[HttpServer]:
    script = directory / "server.py"
    script.write_text(SERVER_SCRIPT)
    mode_file = directory / "mode"
    mode_file.write_text(mode)
    process = await anyio.open_process(
        [sys.executable, str(script), str(mode_file)], stdin=subprocess.DEVNULL, stderr=None
    )
    assert process.stdout is not None
    lines = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(DEADLINE):
            port = int(await lines.receive_until(b"\n", 100))
        server = HttpServer(process, port, mode_file)

        async def drain() -> None:  # keeps the server's stdout pipe from filling up
            try:
                while True:
                    line = await lines.receive_until(b"\n", 65536)
                    server.requests.append(line.decode())
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            try:
                yield server
            finally:
                await server.stop()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


# ---- TCP ----------------------------------------------------------------------------------


class TcpServer:
    """A real listener on 127.0.0.1 that accepts and closes each connection."""

    def __init__(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        self.port: int = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._listener = listener
        self._scope = anyio.CancelScope()
        self._stopped = anyio.Event()

    async def serve(self) -> None:
        async def handle(stream: anyio.abc.SocketStream) -> None:
            await stream.aclose()

        with self._scope:
            await self._listener.serve(handle)
        self._stopped.set()

    async def close(self) -> None:
        """Stop listening: later connections are refused."""
        self._scope.cancel()
        await self._stopped.wait()
        await self._listener.aclose()


@asynccontextmanager
async def tcp_listener() -> AsyncIterator[TcpServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = TcpServer(listener)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        try:
            yield server
        finally:
            await server.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound on 127.0.0.1 but not listening: connecting is refused, and nobody else can
    take it while the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@asynccontextmanager
async def pid_reports() -> AsyncIterator[tuple[int, MemoryObjectReceiveStream[list[int]]]]:
    """A listener a check command reports pids to: one connection, one line of pids."""
    send, receive = anyio.create_memory_object_stream[list[int]](math.inf)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            line = await buffered.receive_until(b"\n", 1000)
            send.send_nowait([int(pid) for pid in line.split()])

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), receive
        tg.cancel_scope.cancel()


# ---- processes -----------------------------------------------------------------------------


async def wait_gone(pid: int) -> None:
    """Wait (on the kernel's pidfd, with a deadline) until ``pid`` has ended. Its parent may not
    have reaped it yet, so a zombie counts as ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(DEADLINE):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)
    with suppress(psutil.NoSuchProcess):
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def live_members_of_group(pgid: int) -> list[int]:
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def kill_quietly(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
