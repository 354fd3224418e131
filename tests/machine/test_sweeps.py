"""Stops of the same moment go to the runner in one sweep; none waits on another job."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from hive.daemon.supervision.sweeps import StopSweeps, SweepKey
from runners.base import ServiceHandle
from tests.machine.harness import FakeRunner

pytestmark = pytest.mark.anyio
KEY: SweepKey = ("fake", 15, 10.0)


async def _handles(count: int) -> list[ServiceHandle]:
    from runners.base import RunSpec

    runner = FakeRunner()
    return [await runner.start(RunSpec(fqn=f"p:s{n}")) for n in range(count)]


async def test_stops_of_one_moment_share_one_sweep() -> None:
    sweeps_made: list[int] = []

    async def stop_many(key: SweepKey, handles: list[ServiceHandle]) -> dict[int, str]:
        sweeps_made.append(len(handles))
        return {id(handles[0]): "refused"}

    sweeps = StopSweeps(stop_many)
    handles = await _handles(100)
    answers: dict[int, dict[int, str]] = {}

    async def stop(n: int) -> None:
        answers[n] = await sweeps.stop(KEY, [handles[n]])

    async with anyio.create_task_group() as tasks:
        for n in range(100):
            tasks.start_soon(stop, n)
    assert sweeps_made == [100]
    assert all(answer == {id(handles[0]): "refused"} for answer in answers.values())


async def test_a_later_stop_gets_a_sweep_of_its_own() -> None:
    sweeps_made: list[int] = []

    async def stop_many(key: SweepKey, handles: list[ServiceHandle]) -> dict[int, str]:
        sweeps_made.append(len(handles))
        return {}

    sweeps = StopSweeps(stop_many)
    first, second = await _handles(2)
    with anyio.fail_after(5):
        await sweeps.stop(KEY, [first])
        await sweeps.stop(KEY, [second])
    assert sweeps_made == [1, 1]


async def test_a_cancelled_opener_releases_the_stops_that_joined() -> None:
    async def stop_many(key: SweepKey, handles: list[ServiceHandle]) -> dict[int, str]:
        return {}

    sweeps = StopSweeps(stop_many)
    first, second = await _handles(2)
    joined: dict[int, str] = {}

    async def join() -> None:
        joined.update(await sweeps.stop(KEY, [second]))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            with anyio.CancelScope() as opener:
                tasks.start_soon(join)
                opener.cancel()
                await sweeps.stop(KEY, [first])  # cancelled while it gathers
    assert joined == {id(first): "the stop was cancelled", id(second): "the stop was cancelled"}
