"""The supervisor in-process: the daemon's real parts, with a fake runner.

:class:`FakeRunner` implements the runner contract (``runners/base.py``) over an
in-memory table of "processes": a start adds one, a stop or a crash ends one, and an
adoption finds one still alive. It can refuse starts (a service that cannot start) and
have its engine go away (stops then fail, and are carried out when it comes back, as
the container runners do).

:class:`InProcessHive` builds what the daemon builds (event bus, state store, state
writer, log hub, supervisor, source registry) on an in-memory SQLite store and a
temporary home, without a socket: a state-machine test runs in milliseconds. A daemon
restart keeps the store and the fake's processes, so adoption is exercised too.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from hive.config import forget_in_process_runner
from hive.daemon.app import App
from hive.daemon.events import EventBus
from hive.daemon.home import HiveHome
from hive.daemon.logs import LogHub
from hive.daemon.runner_registry import RunnerRegistry
from hive.daemon.settings import DaemonSettings
from hive.daemon.sources import SourceRegistry
from hive.daemon.store import StateStore, StateWriter
from hive.daemon.supervision import Supervisor
from runners.base import ExitStatus, Runner, RunnerError, RunSpec, ServiceHandle

__all__ = ["DEPENDENCY_TIMEOUT", "SETTLE_TIMEOUT", "FakeHandle", "FakeRunner", "InProcessHive"]

DEPENDENCY_TIMEOUT = 2.0
SETTLE_TIMEOUT = 1.0


class FakeHandle(ServiceHandle):
    def __init__(self, runner: FakeRunner, number: int, fqn: str) -> None:
        self.runner = runner
        self.number = number
        self.fqn = fqn
        self.status: ExitStatus | None = None
        self._ended = anyio.Event()

    @property
    def alive(self) -> bool:
        return self.status is None

    def record(self) -> dict[str, Any]:
        return {"fake": self.number}

    async def wait(self) -> ExitStatus:
        await self._ended.wait()
        assert self.status is not None
        return self.status

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        if self.runner.engine_away:
            self.runner.stops_owed.add(self)
            raise RunnerError("cannot reach the fake engine")
        await anyio.lowlevel.checkpoint()
        self.end(ExitStatus(signal=stop_signal))
        return await self.wait()

    def end(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self.runner.processes.pop(self.number, None)
            self._ended.set()


class FakeRunner(Runner):
    name = "fake"

    def __init__(self) -> None:
        self.processes: dict[int, FakeHandle] = {}
        self._numbers = itertools.count(1)
        self.refused: set[str] = set()  # service fqns whose starts fail
        self.engine_away = False
        self.stops_owed: set[FakeHandle] = set()
        self.starts = 0
        # While held, starts wait at the gate: a test decides what happens meanwhile.
        self.hold_starts = False
        self._gate = anyio.Event()

    def release_starts(self) -> None:
        self._gate.set()
        self._gate = anyio.Event()

    async def start(self, spec: RunSpec) -> FakeHandle:
        await anyio.lowlevel.checkpoint()  # a start takes a moment: others may act meanwhile
        if self.hold_starts:
            await self._gate.wait()
        if self.engine_away:
            raise RunnerError("cannot reach the fake engine")
        if spec.fqn.partition("#")[0] in self.refused:
            raise RunnerError("the fake refuses to start it")
        handle = FakeHandle(self, next(self._numbers), spec.fqn)
        self.processes[handle.number] = handle
        self.starts += 1
        return handle

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> FakeHandle | None:
        handle = self.processes.get(int(record.get("fake", 0)))
        return handle if handle is not None and handle.alive else None

    def crash(self, fqn: str, code: int = 3) -> bool:
        """End the process of instance ``fqn`` as a crash; False if none runs."""
        for handle in list(self.processes.values()):
            if handle.fqn == fqn:
                handle.end(ExitStatus(exit_code=code))
                return True
        return False

    def lose_engine(self) -> None:
        """The engine goes away: starts and stops fail, and the handles say so."""
        self.engine_away = True
        for handle in list(self.processes.values()):
            if handle.engine is not None:
                handle.engine(False)

    def engine_back(self) -> None:
        """The engine answers again: the stops it owes are carried out."""
        was_away, self.engine_away = self.engine_away, False
        owed, self.stops_owed = self.stops_owed, set()
        for handle in owed:
            handle.end(ExitStatus(signal=int(signal.SIGTERM)))
        for handle in list(self.processes.values()):
            if was_away and handle.engine is not None:
                handle.engine(True)

    def running(self) -> dict[str, int]:
        """How many live processes each instance fqn has."""
        counts: dict[str, int] = {}
        for handle in self.processes.values():
            counts[handle.fqn] = counts.get(handle.fqn, 0) + 1
        return counts


class InProcessHive:
    """One daemon's parts, up inside a task group (see :meth:`running`)."""

    def __init__(self, app: App, supervisor: Supervisor, sources: SourceRegistry) -> None:
        self.app = app
        self.supervisor = supervisor
        self.sources = sources

    @classmethod
    @asynccontextmanager
    async def running(
        cls, home: Path, store: StateStore, runner: FakeRunner, *, keep_services: bool = True
    ) -> AsyncIterator[InProcessHive]:
        """A daemon over ``store`` and ``runner``; on exit it shuts down, leaving its
        services running for the next one when ``keep_services`` (a daemon restart)."""
        hive_home = HiveHome(home)
        settings = DaemonSettings()
        runners = RunnerRegistry()
        runners.add(runner)
        async with anyio.create_task_group() as tasks:
            bus, writer = EventBus(), StateWriter(store)
            logs = LogHub(hive_home.logs_dir, hive_home.run_dir, settings.logs)
            supervisor = Supervisor(
                tasks=tasks, runners=runners, bus=bus, logs=logs, store=store, writer=writer, home=home,
                restart_defaults=lambda: settings.restart,
            )
            # Shorter than a daemon's: every wait of the model-based test stays short.
            supervisor.dependency_timeout = DEPENDENCY_TIMEOUT
            supervisor.settle_timeout = SETTLE_TIMEOUT
            registry = SourceRegistry(home=home, store=store, bus=bus, logs=logs, supervisor=supervisor)
            app = App(
                home=hive_home, settings=settings, socket_path=home / "hive.sock", bus=bus, store=store,
                state_writer=writer, logs=logs, task_group=tasks, services=supervisor, sources=registry,
            )
            await tasks.start(writer.run)
            await tasks.start(logs.run)
            await supervisor.load_persisted()
            await registry.load_all()
            await supervisor.resume(registry.loaded)
            try:
                yield cls(app, supervisor, registry)
            finally:
                with anyio.CancelScope(shield=True), anyio.fail_after(30):
                    await registry.shutdown(keep_services=keep_services)
                    await registry.close()
                tasks.cancel_scope.cancel()
                # Its registry made the fake a known runner type of this process: not for
                # the tests that run after.
                forget_in_process_runner(runner.name)
