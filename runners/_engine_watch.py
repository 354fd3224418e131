"""One engine's event stream and its containers' output, on a thread of the daemon's own.

Without it, every supervised container cost two engine CLI processes (``wait`` and
``logs -f``). Here one thread per engine socket runs an event loop holding:

- **one** ``GET /events`` stream (``kill``, ``die`` and ``destroy`` of containers; podman:
  every container event, its removal is ``remove``) that
  tells each watched container's :class:`Watched` its exit code, and whether the engine
  signalled it first. Its end is the engine going away: every watched container is
  told ``lost`` at once; the stream is opened again after 0.1 s, doubling up to 0.5 s,
  and on each (re)connection every watched container is told ``back`` and inspected
  (one that ended while nothing listened is told its exit);
- one ``GET /containers/{id}/logs?follow=1`` stream per followed container, whose
  frames (an 8-byte header: stream, size) are appended to the capture files.

Why a thread: these streams outlive the call that starts a container (a handle's output
is copied before anyone waits on it), and a runner has no task group of the daemon's to
put them in; the thread's loop owns them, in its own task group. What the daemon's loop
learns from it comes through ``call_soon_threadsafe``: nothing here blocks that loop.
Requests a handle makes itself (create, stop, inspect) stay on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable

import anyio
import anyio.abc

from ._engine_api import ApiError, EngineApi, Starter, filters
from ._engine_logs import LogPosition, copy_log, fd_sink
from ._process import open_output
from .base import RunnerError

__all__ = ["Copy", "EngineWatch", "Watched"]

log = logging.getLogger("hive.runners.container")

RECONNECT_FIRST = 0.1
RECONNECT_MAX = 0.5
# The events a container's supervision needs, as Docker filters them. podman 4 returns
# nothing for an `event` filter (its runner asks for every container event, and this
# thread drops the others); its removal is `remove`, Docker's `destroy`.
DOCKER_EVENTS = {"type": ["container"], "event": ["kill", "die", "destroy"]}


class Watched:
    """What the daemon's loop knows of one container, as the engine's thread tells it.
    Made on the daemon's loop; read there only."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = anyio.Event()
        self.exited = False
        self.exit_code: int | None = None
        self.lost = 0  # how many times the engine went away while it was watched
        self.killed = False  # the engine sent it a signal (a stop by the engine or a user)
        self.back = 0  # how many times the event stream (re)connected while it was watched
        self.following = False  # its output is being copied
        self.copy = 0  # which copy of its output is the current one (an earlier one may end late)
        # Where an engine's error short of an exit goes (the service's log), if anywhere.
        self.report: Callable[[str], None] | None = None

    def tell(self, kind: str, value: int | str | None = None) -> None:
        """From the engine's thread: ``exit`` (value: the code, None if unknown), ``lost``,
        ``kill``, ``back`` (the event stream connected again), ``logs_end`` (value: which copy),
        ``problem`` (value: what the engine said)."""
        with contextlib.suppress(RuntimeError):  # the daemon's loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._apply, kind, value)

    def _apply(self, kind: str, value: int | str | None) -> None:
        if kind == "problem":
            if self.report is not None and isinstance(value, str):
                self.report(value)
            return
        if isinstance(value, str):
            return
        if kind == "exit" and not self.exited:
            self.exited, self.exit_code = True, value
        elif kind == "lost":
            self.lost += 1
        elif kind == "kill":
            self.killed = True
        elif kind == "back":
            self.back += 1
        elif kind == "logs_end" and value == self.copy:
            self.following = False
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def changed(self) -> None:
        """Return at the next change."""
        await self._changed.wait()


class Copy:
    """One container's output being copied; :meth:`cancel` stops it, :meth:`finish`
    ends its follow for the catch-up read (the container has ended), from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        self._loop = loop  # the engine's
        self.number = number
        self.scope = anyio.CancelScope()
        self.follow = anyio.CancelScope()

    def cancel(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.scope.cancel)

    def finish(self) -> None:
        """The engine has told the container's end, and has its whole log by then (dockerd
        logs ``die`` once its output is copied): read the rest now rather than wait for
        the follow stream to end (podman ends it 0.2-0.5 s later)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.follow.cancel)


class EngineWatch:
    """The thread of one engine socket (see the module docstring); :meth:`of` shares it."""

    _all: dict[str, EngineWatch] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, path: str, display: str, *, starter: Starter | None = None,
           events: dict[str, list[str]] | None = None) -> EngineWatch:
        """The watch of the engine at ``path``; ``starter`` starts an engine that does not
        answer, ``events`` is the events filter the engine honours (default: Docker's)."""
        with cls._lock:
            watch = cls._all.get(path)
            if watch is None:
                watch = cls._all[path] = cls(path, display, starter=starter, events=events)
            return watch

    def __init__(self, path: str, display: str, *, starter: Starter | None = None,
                 events: dict[str, list[str]] | None = None) -> None:
        self.path = path
        self.display = display
        self._starter = starter
        self._filter = events if events is not None else DOCKER_EVENTS
        self._watched: dict[str, Watched] = {}  # touched on the engine's loop only
        self._events_running = False
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._api: EngineApi | None = None
        thread = threading.Thread(target=anyio.run, args=(self._main,), name=f"hive-engine {path}", daemon=True)
        thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._loop = asyncio.get_running_loop()
            self._api = EngineApi(self.path, self.display, self._starter)
            self._ready.set()
            await anyio.sleep_forever()

    # --- from the daemon's loop -------------------------------------------------------

    def watch(self, container_id: str, watched: Watched, *, check: bool) -> None:
        """Tell ``watched`` of the container's exit; ``check``: it may have ended already
        (an adopted container), so ask the engine once now."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add, container_id, watched, check)

    def forget(self, container_id: str) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._watched.pop, container_id, None)

    def follow(self, container_id: str, watched: Watched, stdout_path: str, stderr_path: str,
               since: float | None) -> Copy:
        """Copy the container's output (since ``since``, a Unix time; None: all of it) to
        the capture files until it ends; :meth:`Copy.cancel` stops it. Returns at once."""
        assert self._loop is not None and self._tasks is not None
        watched.copy += 1
        copy = Copy(self._loop, watched.copy)
        watched.following = True
        self._loop.call_soon_threadsafe(self._tasks.start_soon, self._copy_logs, container_id, watched,
                                        stdout_path, stderr_path, since, copy)
        return copy

    # --- on the engine's loop ---------------------------------------------------------

    def _add(self, container_id: str, watched: Watched, check: bool) -> None:
        self._watched[container_id] = watched
        if not self._events_running:
            self._events_running = True
            assert self._tasks is not None
            self._tasks.start_soon(self._events)  # inspects every watched one on connecting
        elif check:
            assert self._tasks is not None
            self._tasks.start_soon(self._check, container_id, watched)

    async def _events(self) -> None:
        assert self._api is not None
        delay = RECONNECT_FIRST
        try:
            while self._watched:
                connected = False
                try:
                    async with self._api.stream("/events", filters(**self._filter)) as response:
                        connected, delay = True, RECONNECT_FIRST
                        assert self._tasks is not None
                        for container_id, watched in list(self._watched.items()):
                            watched.tell("back")
                            self._tasks.start_soon(self._check, container_id, watched)
                        async for line in response.aiter_lines():
                            self._event(line)
                except RunnerError:
                    pass  # the engine went away
                except Exception:  # this thread must outlive whatever an engine answers
                    log.exception("the %s engine's event stream at %s failed", self.display, self.path)
                if connected:
                    for watched in list(self._watched.values()):
                        watched.tell("lost")
                await anyio.sleep(delay)  # wait-ok: the engine has no event for its own return
                delay = min(RECONNECT_MAX, delay * 2)
        finally:
            self._events_running = False

    def _event(self, line: str) -> None:
        try:
            event = json.loads(line)
            container_id = str(event.get("id") or event["Actor"]["ID"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        watched = self._watched.get(container_id)
        if watched is None:
            return
        code: int | None = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            code = int(event["Actor"]["Attributes"]["exitCode"])
        action = event.get("Action") or event.get("status")
        if action == "kill":
            watched.tell("kill")
        elif action == "die":
            watched.tell("exit", code)
        elif action in ("destroy", "remove"):  # removed without a die seen: its exit is not known
            watched.tell("exit", None)

    async def _check(self, container_id: str, watched: Watched) -> None:
        """Tell ``watched`` its exit if the container has ended (or is gone)."""
        assert self._api is not None
        try:
            info = await self._api.request("GET", f"/containers/{container_id}/json")
        except RunnerError as exc:
            if getattr(exc, "status", None) == 404:
                watched.tell("exit", None)
            return
        except Exception:  # this thread must outlive whatever an engine answers
            log.exception("inspecting container %s failed", container_id)
            return
        state = (info or {}).get("State") or {} if isinstance(info, dict) else {}
        if not state.get("Running") and state.get("Status") != "created":
            code = state.get("ExitCode")
            watched.tell("exit", code if isinstance(code, int) else None)

    async def _copy_logs(self, container_id: str, watched: Watched, stdout_path: str, stderr_path: str,
                         since: float | None, copy: Copy) -> None:
        try:
            with copy.scope:
                await self._copy_frames(container_id, watched, stdout_path, stderr_path, since, copy.follow)
        finally:
            watched.tell("logs_end", copy.number)

    async def _copy_frames(self, container_id: str, watched: Watched, stdout_path: str, stderr_path: str,
                           since: float | None, follow: anyio.CancelScope) -> None:
        assert self._api is not None
        out = err = None
        try:
            out = open_output(stdout_path) if stdout_path else None
            err = (out if stderr_path == stdout_path else open_output(stderr_path)) if stderr_path else None
            keeper = stdout_path or stderr_path
            # A copy of a container followed before resumes where the last one stopped.
            position = LogPosition.load(container_id, keeper) if since is not None else None
            await copy_log(self._api, container_id, since, fd_sink(out, err),
                           position or LogPosition(container_id, keeper), follow=follow)
        except ApiError as exc:
            if exc.status != 404:  # an engine's error is said, not taken for output or silence
                watched.tell("problem", f"cannot copy the container's output: the {self.display} "
                                        f"engine answered {exc.status}: {exc}")
        except RunnerError:
            pass  # the engine went away (its return is the event stream's business)
        except Exception:  # this thread must outlive whatever happens to one copy
            log.exception("copying the output of container %s failed", container_id)
        finally:
            for fd in {out, err}:
                if fd is not None:
                    os.close(fd)
