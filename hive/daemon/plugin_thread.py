"""A core plugin's own thread and event loop.

Whatever a plugin's code does (a blocking call such as ``time.sleep``, a blocking socket,
a CPU loop), it does it on this thread: the daemon's loop goes on serving. The daemon
submits each callback (``init``, ``on_event``, ...) as a :class:`PluginCall` and waits for
its end on its own loop, with a deadline; past the deadline it cancels the call, and a
call that does not end even then means the plugin's loop is blocked: the daemon gives the
thread up (:meth:`PluginThread.abandon`).

Why a thread rather than a child process: the plugin keeps the in-process API (settings
set on the object, entry-point loading and the trust pin checked once, by the daemon), its
client already talks over a socket pair, and a call costs a thread hop, not a serialised
round trip. The price: a thread cannot be killed. An abandoned thread gets an exception
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
from typing import Any

import anyio

__all__ = ["PluginAbandoned", "PluginCall", "PluginThread"]


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


class HeldContext:
    """An async context manager held open by a task of the plugin's loop (the plugin's
    client: its task group must be entered and left by the same task)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._release: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Enter the context (on the plugin's loop); its error if entering fails."""
        loop = asyncio.get_running_loop()
        entered: asyncio.Future[None] = loop.create_future()
        release = self._release = asyncio.Event()

        async def hold() -> None:
            async with self.manager:
                entered.set_result(None)
                await release.wait()

        task = self._task = loop.create_task(hold())
        try:
            await asyncio.wait({entered, task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not entered.done():
            task.result()  # raises why it could not be entered
        if not entered.done():
            raise RuntimeError("the context ended before it was entered")

    async def close(self) -> None:
        if self._release is not None and self._task is not None:
            self._release.set()
            await self._task
