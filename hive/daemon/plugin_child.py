"""A core plugin in a process of its own: ``python -m hive.daemon.plugin_child CONTROL CLIENT NAME``.

``CONTROL`` and ``CLIENT`` are inherited descriptors: the control socket (:mod:`.plugin_wire`)
and the plugin's end of its client's socket pair, which the daemon serves with the plugin's
scope; ``NAME``, the plugin's, is there for ``ps``. The plugin runs on this process's main
thread, on an event loop of its own; a second thread reads the control socket, so the
daemon can ask where the loop's thread is even while the plugin's code blocks it. The
process ends when the control socket closes (the daemon stopped it, or the daemon is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import logging
import os
import socket
import sys
import threading
import traceback
from typing import Any

import msgspec

from hive.plugin import PluginCallError
from hive_client import LogLevelChanged

from .plugin_callbacks import Callbacks
from .plugin_wire import HEADER, Call, Cancel, Done, Frames, Log, ToDaemon, decode_child, frame

__all__ = ["main"]


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(left)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _ToDaemon(logging.Handler):
    """The plugin's log records, sent to the daemon's log."""

    def __init__(self, child: Child) -> None:
        super().__init__()
        self.child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.child.send(Log(level=record.levelno, logger=record.name, text=self.format(record)))
        except Exception:  # logging never raises into the plugin
            self.handleError(record)


class Child:
    def __init__(self, control: socket.socket, client_sock: socket.socket) -> None:
        self.control = control
        self.loop = asyncio.new_event_loop()
        self.main_ident = threading.get_ident()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.cancelled: set[int] = set()
        self.callbacks = Callbacks(client_sock)
        self._send_lock = threading.Lock()

    def send(self, message: ToDaemon) -> None:
        data = frame(message)
        with self._send_lock:
            try:
                self.control.sendall(data)
            except OSError:  # the daemon is gone: nothing is left to do for it
                os._exit(0)

    # --- the reading thread -------------------------------------------------------------

    def read(self) -> None:
        while (header := _recv_exactly(self.control, HEADER.size)) is not None:
            body = _recv_exactly(self.control, HEADER.unpack(header)[0])
            if body is None:
                break
            message = decode_child(body)
            if isinstance(message, Call):
                self._soon(self._begin, message)
            elif isinstance(message, Cancel):
                self._soon(self._cancel, message.id)
            else:
                self.send(Frames(message.id, self._stack() if message.full else self._where()))
        # The daemon closed the control socket: end, even if the plugin's loop is blocked.
        self._soon(self.loop.stop)
        threading.Timer(1.0, os._exit, (0,)).start()

    def _soon(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
            self.loop.call_soon_threadsafe(callback, *args, context=contextvars.Context())

    def _frame(self) -> Any:
        return sys._current_frames().get(self.main_ident)

    def _where(self) -> str:
        frame_now = self._frame()
        if frame_now is None:
            return "(the plugin's thread has ended)"
        last = traceback.extract_stack(frame_now)[-1]
        return f"{last.filename}:{last.lineno} in {last.name}: {(last.line or '').strip()}"

    def _stack(self) -> str:
        frame_now = self._frame()
        return "".join(traceback.format_stack(frame_now)) if frame_now is not None else ""

    # --- on the plugin's loop -----------------------------------------------------------

    def _begin(self, call: Call) -> None:
        if call.id in self.cancelled:
            self.cancelled.discard(call.id)
            self.send(Done(id=call.id, failure="cancelled"))
        elif call.method == "configure":  # at once, before any event that follows it
            try:
                self.callbacks.configure(call.args["settings"])
            except Exception as exc:
                self.send(_failed(call.id, exc))
            else:
                self.send(Done(id=call.id))
        else:
            self.tasks[call.id] = self.loop.create_task(self._run(call))

    def _cancel(self, call_id: int) -> None:
        task = self.tasks.get(call_id)
        if task is None:
            self.cancelled.add(call_id)
        else:
            task.cancel()

    async def _run(self, call: Call) -> None:
        try:
            value = await self._dispatch(call)
        except asyncio.CancelledError:
            self.send(Done(id=call.id, failure="cancelled"))
        except BaseException as exc:  # handed to the daemon; the loop goes on
            self.send(_failed(call.id, exc))
        else:
            try:
                self.send(Done(id=call.id, value=value))
            except (TypeError, msgspec.EncodeError) as exc:
                self.send(_failed(call.id, TypeError(f"its result cannot be sent to the daemon: {exc}")))
        finally:
            self.tasks.pop(call.id, None)

    async def _dispatch(self, call: Call) -> Any:
        if call.method == "load":
            return self._load(call.args)
        if isinstance(call.event, LogLevelChanged):  # what the daemon's log keeps, the child sends
            with contextlib.suppress(ValueError):
                _set_level(call.event.level.upper())
        return await self.callbacks.dispatch(call.method, call.event, call.args)

    def _load(self, args: dict[str, Any]) -> None:
        """Import the plugin's class (the daemon checked its trust pin just before) and
        create it with its settings."""
        sys.path[:] = args["path"]
        logging.getLogger().handlers[:] = [_ToDaemon(self)]
        _set_level(args["log_level"])
        module_name, _, attribute = args["entry"].partition(":")
        found: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split("."):
            found = getattr(found, part)
        self.callbacks.create(found, args["settings"])


# Libraries that log each request at INFO: the fleet plugin's lease renewals alone would
# write a line a second to the daemon's log. They speak at debug level only.
_PER_REQUEST_LOGGERS = ("httpx",)


def _set_level(level: str | int) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    quiet = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in _PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def _failed(call_id: int, exc: BaseException) -> Done:
    return Done(id=call_id, failure="call_error" if isinstance(exc, PluginCallError) else "error",
                error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)))


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    client_sock = socket.socket(fileno=int(argv[2]))
    control.setblocking(True)
    child = Child(control, client_sock)
    threading.Thread(target=child.read, name="hive-plugin-control", daemon=True).start()
    asyncio.set_event_loop(child.loop)
    try:
        child.loop.run_forever()
    finally:
        os._exit(0)  # a plugin's leftover threads do not hold the process


if __name__ == "__main__":
    main(sys.argv)
