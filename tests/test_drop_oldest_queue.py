"""DropOldestQueue: the bound holds, the oldest go and are counted, close wakes readers."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from hive.daemon.drop_oldest_queue import DropOldestQueue

pytestmark = pytest.mark.anyio

DEADLINE = 5.0


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # The queue is written against anyio only; both backends keep it honest.
    return str(request.param)


def test_the_item_bound_holds_and_the_oldest_are_dropped_and_counted() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    for item in range(10):
        queue.offer(item)  # no event loop needed to offer
        assert queue.pending <= 3
    assert queue.pending == 3
    assert [queue.get_nowait() for _ in range(3)] == [7, 8, 9]
    assert queue.take_dropped() == 7
    assert queue.take_dropped() == 0


def test_a_cost_bound_counts_cost_and_keeps_the_newest_even_if_oversized() -> None:
    queue: DropOldestQueue[bytes] = DropOldestQueue(10, cost=len)
    for item in (b"aaaa", b"bbbb", b"cc"):
        queue.offer(item)
    assert (queue.pending, queue.held_cost, queue.dropped) == (3, 10, 0)
    queue.offer(b"ddd")  # 13 > 10: "aaaa" goes
    assert (queue.held_cost, queue.take_dropped()) == (9, 1)
    queue.offer(b"x" * 25)  # alone over the bound: everything older goes, it stays
    assert (queue.pending, queue.held_cost, queue.take_dropped()) == (1, 25, 3)
    assert queue.get_nowait() == b"x" * 25
    assert queue.held_cost == 0


def test_a_limit_below_one_still_holds_the_newest_item() -> None:
    queue: DropOldestQueue[str] = DropOldestQueue(0)
    queue.offer("a")
    queue.offer("b")
    assert (queue.limit, queue.get_nowait(), queue.take_dropped()) == (1, "b", 1)


async def test_get_nowait_says_whether_more_can_come() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(4)
    with pytest.raises(anyio.WouldBlock):
        queue.get_nowait()
    queue.offer(1)
    queue.close()
    assert queue.get_nowait() == 1
    with pytest.raises(anyio.EndOfStream):
        queue.get_nowait()


async def test_close_delivers_what_is_left_then_ends_and_takes_nothing_more() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(4)
    with queue:
        queue.offer(1)
        queue.offer(2)
    assert queue.closed
    queue.offer(3)
    with anyio.fail_after(DEADLINE):
        assert [item async for item in queue] == [1, 2]
        with pytest.raises(anyio.EndOfStream):
            await queue.get()


async def test_close_wakes_a_waiting_getter() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(4)
    outcome: list[str] = []

    async def getter() -> None:
        try:
            await queue.get()
            outcome.append("item")
        except anyio.EndOfStream:
            outcome.append("ended")

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(getter)
            await anyio.wait_all_tasks_blocked()  # the getter is waiting on the queue
            assert outcome == []
            queue.close()
    assert outcome == ["ended"]


async def test_concurrent_getters_each_get_an_item() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(4)
    got: list[int] = []

    async def getter() -> None:
        got.append(await queue.get())

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(getter)
            await anyio.wait_all_tasks_blocked()
            queue.offer(1)
            await anyio.wait_all_tasks_blocked()
            queue.offer(2)
            queue.offer(3)
    assert sorted(got) == [1, 2, 3]


async def test_a_getter_that_falls_behind_loses_only_the_oldest_and_knows_how_many() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(8)
    total = 5_000
    received: list[int] = []
    dropped = 0

    async def reader() -> None:
        nonlocal dropped
        async for item in queue:
            dropped += queue.take_dropped()
            received.append(item)
            if item % 3 == 0:
                await anyio.lowlevel.checkpoint()  # slower than the producer, sometimes

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for item in range(total):
                queue.offer(item)
                assert queue.pending <= 8
                if item % 50 == 0:
                    await anyio.lowlevel.checkpoint()
            queue.close()
    dropped += queue.take_dropped()
    assert received == sorted(received)  # in order, nothing twice
    assert received[-1] == total - 1  # the newest is never the one dropped
    assert len(received) + dropped == total
    assert dropped > 0  # the bound was actually reached
