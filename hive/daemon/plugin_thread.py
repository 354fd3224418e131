"""A core plugin's own thread and event loop.

Whatever a plugin's code does (a blocking call such as ``time.sleep``, a blocking socket,
a CPU loop), it does it on this thread: the daemon's loop goes on serving. The daemon
submits each callback (``init``, ``on_event``, ...) as a :class:`PluginCall` and waits for
its end on its own loop, with a deadline; past the deadline it cancels the call, and a
call that does not end even then means the plugin's loop is blocked: the daemon gives the
thread up (:meth:`PluginThread.abandon`).

Used with ``isolation = "thread"`` (the default is a child process, :mod:`.plugin_process`):
no interpreter of its own to start, a call costs a thread hop. The price: the plugin shares
the daemon's GIL, and a thread cannot be killed. An abandoned thread gets an exception
raised into it (which ends a pure-Python loop at once and a blocking call when it returns)
and its connection is cut, so it can no longer act on the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .plugin_callbacks import Callbacks

if TYPE_CHECKING:
    import socket

    from hive.plugin import CorePlugin
    from hive_client import DaemonEvent

__all__ = ["PluginAbandoned", "PluginCall", "PluginThread", "ThreadRunner"]


class PluginAbandoned(BaseException):
    """Raised into the thread of a plugin the daemon gave up on."""


class PluginCall:
    """One coroutine of the plugin running on its thread, seen from the daemon's loop."""

    def __init__(self, daemon_loop: asyncio.AbstractEventLoop) -> None:
        self._daemon_loop = daemon_loop
        self.finished = anyio.Event()  # set on the daemon's loop once the call ended
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self) -> Any:
        """The call's value; its exception re-raised (one that is not an Exception,
        such as a cancellation, as a RuntimeError)."""
        if self._error is None:
            return self._value
        if isinstance(self._error, Exception):
            raise self._error
        raise RuntimeError(f"the call ended with {type(self._error).__name__}")

    async def _run(self, function: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            self._value = await function(*args)
        except BaseException as exc:  # handed to the daemon; the plugin's loop goes on
            self._error = exc

    def _ended(self, task: asyncio.Task[Any] | None = None) -> None:
        if task is not None and task.cancelled() and self._error is None:
            self._error = asyncio.CancelledError()  # cancelled before it began
        # RuntimeError: the daemon's loop is closed, nobody waits any more.
        with contextlib.suppress(RuntimeError):
            self._daemon_loop.call_soon_threadsafe(self.finished.set)

    def _begin(self, loop: asyncio.AbstractEventLoop, function: Callable[..., Awaitable[Any]],
               args: tuple[Any, ...]) -> None:
        if self._cancelled:
            self._error = asyncio.CancelledError()
            self._ended()
            return
        self._task = loop.create_task(self._run(function, args))
        self._task.add_done_callback(self._ended)

    def _cancel(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()


class PluginThread:
    """A thread running an event loop of its own for one plugin."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=f"hive-plugin-{name}", daemon=True)
        self.abandoned = False
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        except BaseException:  # PluginAbandoned, or the plugin broke its own loop
            pass
        finally:
            with contextlib.suppress(BaseException):
                self.loop.close()

    def submit(self, function: Callable[..., Awaitable[Any]], *args: Any) -> PluginCall:
        """Start ``function(*args)`` on the plugin's loop (from the daemon's loop)."""
        call = PluginCall(asyncio.get_running_loop())
        # A fresh context: nothing of the daemon's task (cancel scopes, log context) leaks in.
        self.loop.call_soon_threadsafe(call._begin, self.loop, function, args, context=contextvars.Context())
        return call

    def cancel(self, call: PluginCall) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(call._cancel)

    def responds(self) -> PluginCall:
        """A call that does nothing: it ends as soon as the plugin's loop is free (the watchdog)."""
        return self.submit(_nothing)

    def where(self) -> str:
        """Where the plugin's thread is now: its innermost frame, as one line."""
        frame = sys._current_frames().get(self.thread.ident or -1)
        if frame is None:
            return "(the thread has ended)"
        last = traceback.extract_stack(frame)[-1]
        return f"{last.filename}:{last.lineno} in {last.name}: {(last.line or '').strip()}"

    def stack(self) -> str:
        frame = sys._current_frames().get(self.thread.ident or -1)
        return "".join(traceback.format_stack(frame)) if frame is not None else ""

    def stop(self) -> None:
        """End the loop (once every call ended); the thread then ends by itself."""
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)

    def abandon(self) -> None:
        """Give the thread up: raise :class:`PluginAbandoned` into it and stop its loop."""
        self.abandoned = True
        self.stop()
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(PluginAbandoned))


async def _nothing() -> None:
    return None


class ThreadRunner:
    """A plugin on a thread of the daemon's own process (``isolation = "thread"``): the
    same calls as :class:`~.plugin_process.PluginProcess`, run on a :class:`PluginThread`."""

    def __init__(self, name: str, plugin_class: type[CorePlugin[Any]]) -> None:
        self.plugin_class = plugin_class
        self.thread = PluginThread(name)
        self.callbacks: Callbacks | None = None
        self.ended: str | None = None  # a thread is never gone by itself
        self.pid: int | None = None  # the daemon's own

    async def begin(self, client_sock: socket.socket) -> None:
        self.callbacks = Callbacks(client_sock)

    def submit(self, method: str, *, event: DaemonEvent | None = None, args: dict[str, Any] | None = None) -> PluginCall:
        callbacks = self.callbacks
        assert callbacks is not None
        if method == "load":
            return self.thread.submit(self._load, callbacks, (args or {})["settings"])
        return self.thread.submit(callbacks.dispatch, method, event, args or {})

    async def _load(self, callbacks: Callbacks, settings: dict[str, Any]) -> None:
        callbacks.create(self.plugin_class, settings)

    def configure(self, settings: dict[str, Any]) -> None:
        if self.callbacks is not None:
            self.callbacks.configure(settings)

    def cancel(self, call: PluginCall) -> None:
        self.thread.cancel(call)

    async def where(self) -> str:
        return self.thread.where()

    async def stack(self) -> str:
        return self.thread.stack()

    async def stop(self, grace: float = 0.0) -> None:
        self.thread.stop()

    async def abandon(self) -> None:
        self.thread.abandon()
