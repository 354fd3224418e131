"""A core plugin in a child process of its own, seen from the daemon's loop.

The child (:mod:`.plugin_child`) runs the plugin on its own interpreter: a CPU loop in the
plugin holds that process's GIL, not the daemon's, and a plugin that never returns is
killed with its whole process group. The daemon hands each callback to it as a
:class:`~.plugin_wire.Call` on a control socket and waits for the :class:`~.plugin_wire.Done`
on its own loop; the plugin's requests go over its client's socket pair, served like any
connection with its scope.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import anyio
import anyio.abc
import msgspec
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from hive.plugin import PluginCallError
from hive_client import DaemonEvent
from runners._process import CLOCK_TICKS, read_stat

from .plugin_wire import HEADER, Call, Cancel, Done, Frames, Log, Where, decode_daemon, frame

__all__ = ["PluginError", "PluginProcess", "RemoteCall"]

log = logging.getLogger("hive.plugins")
# The daemon's own: systemd's notify socket and socket activation are not the plugin's.
_DAEMON_ONLY = frozenset({"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"})
_MAX_MESSAGE = 64 * 1024 * 1024  # a stack dump or a log line is far below
_END_WAIT = 2.0  # how long a child whose control socket closed has to exit before it is killed


class PluginError(Exception):
    """The plugin's code raised in its process: its message, the traceback in ``remote``."""

    def __init__(self, message: str, remote: str) -> None:
        super().__init__(message)
        self.remote = remote


class RemoteCall:
    """One callback running in the plugin's process."""

    def __init__(self, call_id: int) -> None:
        self.id = call_id
        self.finished = anyio.Event()
        self._done: Done | None = None

    def end(self, done: Done) -> None:
        self._done = done
        self.finished.set()

    def result(self) -> Any:
        done = self._done
        assert done is not None
        if not done.failure:
            return done.value
        if done.failure == "call_error":
            raise PluginCallError(done.error)
        if done.failure == "cancelled":
            raise RuntimeError("the call ended with CancelledError")
        raise PluginError(done.error, done.traceback)


class _Answer:
    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.text = ""


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc gives a process's start in."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "it closed its control socket"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class PluginProcess:
    """The child process of one plugin, its control socket and the calls in flight."""

    def __init__(self, name: str, task_group: anyio.abc.TaskGroup) -> None:
        self.name = name
        self._task_group = task_group
        self._ids = itertools.count(1)
        self._calls: dict[int, RemoteCall] = {}
        self._answers: dict[int, _Answer] = {}
        self._process: anyio.abc.Process | None = None
        self._ended_ticks = math.inf  # when the child was seen to end (reaped), in boot ticks
        self._stream: anyio.abc.SocketStream | None = None
        self._outbox, self._outgoing = anyio.create_memory_object_stream[bytes](math.inf)
        self.ended: str | None = None  # why the process is gone (its exit), once it is
        self._gone = anyio.Event()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def begin(self, client_sock: socket.socket) -> None:
        """Start the child, in a process group of its own, handing it ``client_sock``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fds = (theirs.fileno(), client_sock.fileno())
            self._process = await anyio.open_process(
                [sys.executable, "-m", "hive.daemon.plugin_child", *map(str, fds), self.name],
                stdin=subprocess.DEVNULL, stdout=None, stderr=None, pass_fds=fds, start_new_session=True,
                env={key: value for key, value in os.environ.items() if key not in _DAEMON_ONLY})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            client_sock.close()
        self._stream = await anyio.abc.UNIXSocketStream.from_socket(ours)
        self._task_group.start_soon(self._pump)

    # --- calls ----------------------------------------------------------------------------

    def submit(self, method: str, *, event: DaemonEvent | None = None, args: dict[str, Any] | None = None) -> RemoteCall:
        call = RemoteCall(next(self._ids))
        if self.ended is not None:
            call.end(self._gone_done(call.id))
            return call
        self._calls[call.id] = call
        self._send(Call(id=call.id, method=method, event=event, args=args or {}))
        return call

    def configure(self, settings: dict[str, Any]) -> None:
        """New settings: set in the child before any event sent after them."""
        self.submit("configure", args={"settings": settings})

    def cancel(self, call: RemoteCall) -> None:
        if not call.finished.is_set():
            self._send(Cancel(call.id))

    async def where(self, full: bool = False) -> str:
        """Where the plugin's loop thread is (``full``: its whole stack), asked from a
        thread of the child that answers even while the loop is blocked."""
        if self.ended is not None:
            return f"(the plugin's process has ended: {self.ended})"
        ask = next(self._ids)
        answer = self._answers[ask] = _Answer()
        self._send(Where(ask, full))
        with anyio.move_on_after(2.0):
            await answer.arrived.wait()
        self._answers.pop(ask, None)
        return answer.text or "(the plugin's process does not answer: its interpreter is blocked)"

    async def stack(self) -> str:
        return await self.where(full=True)

    def _send(self, message: Call | Cancel | Where) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._outbox.send_nowait(frame(message))

    def _gone_done(self, call_id: int) -> Done:
        return Done(id=call_id, failure="error", error=f"the plugin's process has ended ({self.ended})")

    # --- the control socket ---------------------------------------------------------------

    async def _pump(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._write, stream)
                await self._read(stream)
                pumps.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
                code = None
                if self._process is not None:
                    with anyio.move_on_after(_END_WAIT):
                        code = await self._process.wait()
                        self._ended_ticks = _boot_ticks()
                self.ended = _exit_text(code)
                for call_id, call in list(self._calls.items()):
                    call.end(self._gone_done(call_id))
                self._calls.clear()
                self._gone.set()

    async def _write(self, stream: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            async for data in self._outgoing:
                await stream.send(data)
            await stream.send_eof()  # stop() closed the outbox: the child ends

    async def _read(self, stream: anyio.abc.SocketStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        plugin_log = logging.getLogger(f"hive.plugins.{self.name}")
        try:
            while True:
                header = await buffered.receive_exactly(HEADER.size)
                size = HEADER.unpack(header)[0]
                if size > _MAX_MESSAGE:  # not our child speaking, or a broken one: no 4 GiB buffer
                    log.error("plugin %s: its process announced a %d-byte message; killing it", self.name, size)
                    self._kill()
                    return
                message = decode_daemon(await buffered.receive_exactly(size))
                if isinstance(message, Done):
                    call = self._calls.pop(message.id, None)
                    if call is not None:
                        call.end(message)
                elif isinstance(message, Frames):
                    answer = self._answers.pop(message.id, None)
                    if answer is not None:
                        answer.text = message.text
                        answer.arrived.set()
                elif isinstance(message, Log):
                    plugin_log.log(message.level, "plugin %s (%s): %s", self.name, message.logger, message.text)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError):
            return
        except msgspec.DecodeError as exc:  # not our child speaking: it is ended below
            log.error("plugin %s: its process sent an unreadable message (%s); killing it", self.name, exc)
            self._kill()

    # --- the end --------------------------------------------------------------------------

    async def stop(self, grace: float = _END_WAIT) -> None:
        """Close the control socket (the child exits by itself); kill its process group if
        it has not exited within ``grace``, and what it left in the group anyway."""
        self._outbox.close()
        if self._process is None:  # it never started
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(grace):
                await self._gone.wait()
            self._kill()
            await self._reap()

    async def abandon(self) -> None:
        """Kill the child and its process group at once (it is blocked or misbehaves)."""
        self._outbox.close()
        self._kill()
        with anyio.CancelScope(shield=True):
            await self._reap()

    def _kill(self) -> None:
        pid = self.pid
        if pid is None or self._process is None:
            return
        if self._process.returncode is None:
            # Unreaped, the leader holds its number: the group (start_new_session) is the
            # child's own, and its leftovers go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            return
        # Reaped: the number is free once no process has it as its group or session. A
        # process with that number now is another's, and so is its group. Otherwise only
        # members that started before the child ended are ours (asyncio may have reaped
        # it before anyone waited: then, before now). Kernel start ticks, not psutil's
        # create_time: that is off by up to a second (the boot time it adds is rounded).
        if read_stat(pid) is not None:
            return
        ended = min(self._ended_ticks, _boot_ticks())
        for member in psutil.pids():
            info = read_stat(member)
            if info is not None and info.pgid == pid and info.ticks <= ended:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)

    async def _reap(self) -> None:
        if self._process is not None:
            with anyio.move_on_after(_END_WAIT):
                await self._process.wait()
