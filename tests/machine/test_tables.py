"""The transition table and the job-merge table: complete, consistent, and documented as
they are (docs/services.md is checked against both)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from hive.daemon.supervision.jobs import MERGE, Job, JobKind, Owner
from hive.daemon.supervision.machine import (
    LIVE,
    TRANSITIONS,
    WIRE_STATE,
    IllegalTransition,
    Input,
    Phase,
    mermaid,
    next_phase,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "services.md"
COMMANDS = (JobKind.START, JobKind.STOP, JobKind.RESTART)


def test_the_docs_draw_the_table_as_it_is() -> None:
    text = DOCS.read_text()
    drawn = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert drawn is not None, "docs/services.md has no state diagram"
    assert drawn.group(1) == mermaid(), "docs/services.md: run the diagram again from machine.mermaid()"


def test_the_docs_list_the_merge_table_as_it_is() -> None:
    kinds = "(start|stop|restart|rollout)"
    rows = re.findall(rf"^\| {kinds} \| {kinds} \| {kinds} \|$",
                      DOCS.read_text(), re.M)
    assert {(JobKind(a), JobKind(b)): JobKind(c) for a, b, c in rows} == MERGE


def test_commands_are_accepted_in_every_phase() -> None:
    for phase in Phase:
        assert (phase, Input.START) in TRANSITIONS, phase
        assert (phase, Input.STOP) in TRANSITIONS, phase


def test_a_stop_leaves_no_live_phase_that_does_not_end() -> None:
    for phase in LIVE:
        stopping = next_phase(phase, Input.STOP)
        assert stopping in (Phase.STOPPING, Phase.FAILING), (phase, stopping)
        assert next_phase(stopping, Input.ENDED) in (Phase.STOPPED, Phase.CRASHED)


def test_every_phase_is_reachable_from_stopped() -> None:
    seen = {Phase.STOPPED}
    frontier = [Phase.STOPPED]
    while frontier:
        phase = frontier.pop()
        for (source, _given), target in TRANSITIONS.items():
            if source is phase and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(Phase)


def test_every_phase_shows_as_a_wire_state() -> None:
    assert set(WIRE_STATE) == set(Phase)


def test_an_input_the_table_does_not_list_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="no transition from stopped on exited_ok"):
        next_phase(Phase.STOPPED, Input.EXITED_OK)


def test_the_merge_table_covers_every_pair_of_commands() -> None:
    for queued, arriving in itertools.product(COMMANDS, repeat=2):
        merged = MERGE[(queued, arriving)]
        assert merged in (queued, arriving, JobKind.RESTART), (queued, arriving, merged)
        if queued == arriving:
            assert merged == queued
    # A stop and a start conflict: the newer one wins, as in systemd.
    assert MERGE[(JobKind.START, JobKind.STOP)] is JobKind.STOP
    assert MERGE[(JobKind.STOP, JobKind.START)] is JobKind.START


@pytest.mark.anyio
@pytest.mark.parametrize(("queued", "arriving"), list(itertools.product(COMMANDS, repeat=2)))
async def test_an_owner_merges_a_queued_job_by_the_table(queued: JobKind, arriving: JobKind) -> None:
    """A job runs; one queues behind it; a third arrives: the last two become one job,
    of the kind the table says, and both callers get its result."""
    ran: list[JobKind] = []
    release = anyio.Event()

    async def run(job: Job) -> str:
        ran.append(job.kind)
        if len(ran) == 1:
            await release.wait()
        return f"{job.kind} done"

    async with anyio.create_task_group() as tasks:
        owner = Owner("p:web", tasks, run)
        first = owner.submit(JobKind.START)
        await anyio.wait_all_tasks_blocked()
        second = owner.submit(queued)
        third = owner.submit(arriving)
        assert third is second
        release.set()
        with anyio.fail_after(5):
            assert await second.wait() == f"{MERGE[(queued, arriving)]} done"
            assert await third.wait() == f"{MERGE[(queued, arriving)]} done"
            await first.wait()
            await owner.wait_idle()
    assert ran == [JobKind.START, MERGE[(queued, arriving)]]


@pytest.mark.anyio
async def test_jobs_with_an_argument_keep_their_order() -> None:
    ran: list[tuple[JobKind, object]] = []

    async def run(job: Job) -> None:
        ran.append((job.kind, job.argument))
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        owner = Owner("p:web", tasks, run)
        jobs = [owner.submit(JobKind.SCALE, 3), owner.submit(JobKind.STOP), owner.submit(JobKind.SCALE, 1),
                owner.submit(JobKind.START), owner.submit(JobKind.STOP)]
        with anyio.fail_after(5):
            for job in jobs:
                await job.wait()
    assert ran == [(JobKind.SCALE, 3), (JobKind.STOP, None), (JobKind.SCALE, 1), (JobKind.STOP, None)]


@pytest.mark.anyio
async def test_a_claimed_job_holds_the_owner_until_released() -> None:
    ran: list[JobKind] = []

    async def run(job: Job) -> str:
        ran.append(job.kind)
        return f"{job.kind} done"

    async with anyio.create_task_group() as tasks:
        owner = Owner("p:web", tasks, run)
        claimed = owner.claim(JobKind.STOP)
        assert claimed is not None and not owner.idle
        assert owner.claim(JobKind.STOP) is None  # busy: a second caller must submit
        started = owner.submit(JobKind.START)
        merged = owner.submit(JobKind.START)
        assert merged is started  # queued behind the claimed job, merged as usual
        await anyio.wait_all_tasks_blocked()
        assert ran == [] and not started.done  # nothing runs past a claimed job
        owner.release(claimed, "stopped here")
        with anyio.fail_after(5):
            assert await claimed.wait() == "stopped here"
            assert await started.wait() == "start done"
            await owner.wait_idle()
        assert ran == [JobKind.START]
        idle_claim = owner.claim(JobKind.STOP)
        assert idle_claim is not None
        owner.release(idle_claim)
        owner.close()
        assert owner.claim(JobKind.STOP) is None  # closed: no more jobs, claimed or not
