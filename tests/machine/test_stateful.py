"""A model-based test of supervision: random interleavings of commands and child events
against the real supervisor and source registry, with a fake runner.

Commands run in the background (several at once, as clients would send them); child
events (a crash, a health flip, the engine going away) land between them. After every
step the invariants that must hold at any moment are checked; at quiescence (every
command answered, every instance settled) the ones about the end result:

- every request is answered within its bound;
- no instance runs whose desired state is stopped;
- every wanted instance is running, in backoff, or failed with a reason;
- no duplicates: one process per instance at most, and none unsupervised;
- no lock is held, and every owner is idle;
- the persisted desired state equals the in-memory one.

``HIVE_STATEFUL_EXAMPLES`` sets the number of examples (CI runs 200). A failure prints
the steps that led to it and its seed; ``HIVE_STATEFUL_SEED=N`` runs that seed again.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hive.daemon.errors import RequestError
from hive.daemon.store import StateStore
from hive.daemon.supervision import Phase
from hive.daemon.supervision.machine import LIVE
from tests.machine.harness import DEPENDENCY_TIMEOUT, SETTLE_TIMEOUT, FakeRunner, InProcessHive

# Each command's answer comes within this: a start waits at most the settle timeout for
# its instances, a fake stop is immediate (and one its engine owes is not waited for).
ANSWER_BOUND = SETTLE_TIMEOUT + DEPENDENCY_TIMEOUT + 2.0
EXAMPLES = int(os.environ.get("HIVE_STATEFUL_EXAMPLES", "200"))

SERVICES = ("a", "b", "c")
# a: never restarted; b: depends on a, restarted on failure after a long delay (a
# backoff is a settled state); c: always restarted at once (the crash path).
SPEC = {
    "a": "    runner: {type: fake}\n    restart: {policy: never}\n",
    "b": "    runner: {type: fake}\n    depends_on: [a]\n    restart: {policy: on-failure, delay: 1000s}\n",
    "c": "    runner: {type: fake}\n    restart: {policy: always, delay: 0.01s, max_delay: 0.2s}\n",
}
TRANSIENT = frozenset(LIVE - {Phase.RUNNING, Phase.UNHEALTHY, Phase.BACKOFF})


def _write_project(directory: Path, generation: int, extra: bool) -> None:
    text = 'version: "1"\nservices:\n'
    for name in SERVICES:
        text += f"  {name}:\n" + SPEC[name]
        if name == "a":
            text += f"    environment: {{static: {{GENERATION: '{generation}'}}}}\n"
    if extra:
        text += "  d:\n    runner: {type: fake}\n"
    (directory / "hive.yaml").write_text(text)


class Supervision(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="hive-machine-"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.project = self.tmp / "p"
        self.project.mkdir()
        self.generation = 0
        self.extra = False
        _write_project(self.project, self.generation, self.extra)
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self.store: StateStore = self.portal.call(StateStore.open, Path(":memory:"))
        self.fake = FakeRunner()
        self.pending: list[tuple[str, Future[Any]]] = []
        self._open()
        self.portal.call(self.hive.sources.add, str(self.project), "p")
        self.added = True

    def _open(self) -> None:
        self._hive_cm = self.portal.wrap_async_context_manager(
            InProcessHive.running(self.home, self.store, self.fake)
        )
        self.hive: InProcessHive = self._hive_cm.__enter__()

    def _close(self) -> None:
        self._hive_cm.__exit__(None, None, None)

    def teardown(self) -> None:
        try:
            self._settle()
            # The last daemon stops everything: nothing may be left running.
            self._hive_cm.__exit__(None, None, None)
            self._hive_cm = self.portal.wrap_async_context_manager(
                InProcessHive.running(self.home, self.store, self.fake, keep_services=False)
            )
            self._hive_cm.__enter__()
            self._hive_cm.__exit__(None, None, None)
            assert self.fake.running() == {}, f"left running after the daemon stopped: {self.fake.running()}"
        finally:
            self.portal.call(self.store.close)
            self._portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- commands, sent in the background ------------------------------------------------

    def _send(self, what: str, func: Any, *args: Any) -> None:
        async def call() -> Any:
            with anyio.fail_after(ANSWER_BOUND):
                try:
                    return await func(*args)
                except RequestError as exc:  # NOT_FOUND (removed meanwhile), SHUTTING_DOWN: answers
                    return exc

        self.pending.append((what, self.portal.start_task_soon(call)))

    @rule(name=st.sampled_from(SERVICES))
    def start(self, name: str) -> None:
        self._send(f"start {name}", self.hive.supervisor.start, [f"p:{name}"])

    @rule(name=st.sampled_from(SERVICES))
    def stop(self, name: str) -> None:
        self._send(f"stop {name}", self.hive.supervisor.stop, [f"p:{name}"])

    @rule(name=st.sampled_from(SERVICES))
    def restart(self, name: str) -> None:
        self._send(f"restart {name}", self.hive.supervisor.restart, f"p:{name}")

    @rule(name=st.sampled_from(SERVICES), count=st.integers(0, 3))
    def scale(self, name: str, count: int) -> None:
        self._send(f"scale {name} {count}", self.hive.supervisor.scale, f"p:{name}", count)

    @rule()
    def start_source(self) -> None:
        self._send("start source", self.hive.sources.start, "p", [])

    @rule()
    def stop_source(self) -> None:
        self._send("stop source", self.hive.sources.stop, "p")

    @precondition(lambda self: self.added)
    @rule()
    def remove_source(self) -> None:
        self.added = False
        self._send("remove source", self.hive.sources.remove, "p")

    @precondition(lambda self: not self.added)
    @rule(start=st.booleans())
    def add_source(self, start: bool) -> None:
        self._settle()  # the remove is over: the same name is free again
        self.added = True
        self.portal.call(self.hive.sources.add, str(self.project), "p")
        if start:
            self._send("start source", self.hive.sources.start, "p", [])

    @rule(change_a=st.booleans(), toggle_extra=st.booleans())
    def reload(self, change_a: bool, toggle_extra: bool) -> None:
        self.generation += change_a
        self.extra ^= toggle_extra
        _write_project(self.project, self.generation, self.extra)
        self._send("reload", functools.partial(self.hive.sources.reload, dry_run=False), "p")

    # --- what the children and engines do ------------------------------------------------

    @rule(name=st.sampled_from(SERVICES), index=st.integers(0, 2))
    def crash(self, name: str, index: int) -> None:
        fqn = f"p:{name}" if index == 0 else f"p:{name}#{index}"
        self.portal.call(self.fake.crash, fqn)

    @rule(name=st.sampled_from(SERVICES), healthy=st.booleans())
    def health_flip(self, name: str, healthy: bool) -> None:
        def flip() -> None:
            service = self.hive.supervisor.services.get(f"p:{name}")
            if service is not None and service.instances[0].phase in (Phase.POST_UP, Phase.RUNNING, Phase.UNHEALTHY):
                self.hive.supervisor._health_changed(service.instances[0], healthy, "flipped by the test")

        self.portal.call(flip)

    @rule(hold=st.booleans())
    def hold_starts(self, hold: bool) -> None:
        """Starts wait in the runner (an instance stays starting) until released."""
        self.fake.hold_starts = hold

    @rule()
    def release_starts(self) -> None:
        self.portal.call(self.fake.release_starts)

    @rule()
    def engine_away(self) -> None:
        self.portal.call(self.fake.lose_engine)

    @rule()
    def engine_back(self) -> None:
        self.portal.call(self.fake.engine_back)

    @rule(name=st.sampled_from(SERVICES), refuse=st.booleans())
    def refuse_starts(self, name: str, refuse: bool) -> None:
        if name == "c":
            return  # always restarted: refusing it would loop without end
        (self.fake.refused.add if refuse else self.fake.refused.discard)(f"p:{name}")

    @rule()
    def daemon_restart(self) -> None:
        self._settle()
        before = self.fake.running()
        self._close()
        self._open()
        self._settle()
        for fqn, count in before.items():
            # What ran is adopted (not run twice), unless it is no longer wanted.
            assert self.fake.running().get(fqn, 0) <= count, (fqn, before, self.fake.running())

    @rule()
    def settle(self) -> None:
        self._settle(check=True)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def no_duplicates(self) -> None:
        duplicated = {fqn: n for fqn, n in self.fake.running().items() if n > 1}
        assert not duplicated, f"instances running twice: {duplicated}"

    @invariant()
    def answers_in_bound(self) -> None:
        for what, future in self.pending:
            if future.done():
                exc = future.exception()
                assert exc is None, f"{what} failed: {exc!r}"

    def _settle(self, *, check: bool = False) -> None:
        """Every command answered (within its bound), every instance settled."""
        self.fake.hold_starts = False
        self.portal.call(self.fake.release_starts)
        pending, self.pending = self.pending, []
        for what, future in pending:
            try:
                future.result(timeout=ANSWER_BOUND + 5)
            except TimeoutError:
                raise AssertionError(f"{what} was not answered within {ANSWER_BOUND} s") from None
        self.portal.call(self.fake.engine_back)
        self.portal.call(self._quiesce, check)

    async def _quiesce(self, check: bool) -> None:
        supervisor = self.hive.supervisor
        with anyio.fail_after(ANSWER_BOUND):
            while True:
                owners = [s.owner for s in supervisor.services.values() if s.owner is not None and not s.owner.idle]
                if owners:
                    await owners[0].wait_idle()
                    continue
                busy = [s for s in supervisor.services.values() if any(i.phase in TRANSIENT for i in s.instances)]
                if busy:
                    await busy[0].changed.wait()
                    continue
                # Nothing moves: unless a task woken by the last change (a service kept
                # up for a dependent, now released) still has something to do.
                await anyio.wait_all_tasks_blocked()
                if all(s.owner is None or s.owner.idle for s in supervisor.services.values()) and not any(
                    i.phase in TRANSIENT for s in supervisor.services.values() for i in s.instances
                ):
                    break
        if check:  # in the loop's thread, before anything moves again (a backoff timer)
            self._check_quiescent()
        await self.hive.app.state_writer.flush()
        if check:
            await self._check_persisted()

    def _check_quiescent(self) -> None:
        supervisor = self.hive.supervisor
        assert not self.hive.sources._lock.locked(), "the source registry's lock is held"
        running = self.fake.running()
        supervised: dict[str, int] = {}
        for service in supervisor.services.values():
            for instance in service.instances:
                if instance.handle is not None:
                    supervised[instance.fqn] = supervised.get(instance.fqn, 0) + 1
                wanted = instance in service.wanted() and service.desired == "running"
                if not wanted:
                    assert not instance.live, f"{instance.fqn} runs ({instance.phase}) but is not wanted"
                else:
                    assert instance.phase in (Phase.RUNNING, Phase.UNHEALTHY, Phase.BACKOFF) or (
                        instance.phase in (Phase.CRASHED, Phase.EXITED, Phase.PORT_CONFLICT) and instance.last_error
                    ) or instance.phase is Phase.EXITED, (
                        f"{instance.fqn} is wanted but {instance.phase} ({instance.last_error})"
                    )
        assert running == supervised, f"processes {running} but supervised {supervised}"

    async def _check_persisted(self) -> None:
        supervisor = self.hive.supervisor
        rows = await self.store.fetch_all("SELECT fqn, desired, instances FROM services")
        stored = {row[0]: (row[1], row[2]) for row in rows}
        for fqn, service in supervisor.services.items():
            if fqn in stored:
                assert stored[fqn] == (service.desired, service.scale), (fqn, stored[fqn])
            else:
                assert service.desired == "stopped" and service.scale == 1, f"{fqn} not persisted"


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)


@pytest.mark.slow
def test_supervision_state_machine() -> None:
    chosen = int(os.environ.get("HIVE_STATEFUL_SEED") or random.randrange(2**32))
    try:
        run_state_machine_as_test(seed(chosen)(Supervision), settings=SETTINGS)
    except BaseException as exc:
        raise AssertionError(
            f"the supervision state machine failed with seed {chosen}: run it again with "
            f"HIVE_STATEFUL_SEED={chosen} (the steps are printed above)"
        ) from exc
