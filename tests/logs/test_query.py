"""query() and subscribe(): patterns, last N, since, level, tail, drop-oldest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hive.daemon.logs import LogHub
from hive_client import LogLevel, LogLine
from tests.logs.helpers import messages, running_hub, wait_for_message, write

pytestmark = pytest.mark.anyio

INSTANCES = ("proj:web#1", "proj:web#2", "proj:api", "other:web")


async def _emit(hub: LogHub, fqn: str, script: str, *expected: str) -> None:
    """Run a writer and wait until every expected message has arrived."""
    missing = set(expected)

    def all_seen(line: LogLine) -> bool:
        missing.discard(line.message)
        return not missing

    with hub.subscribe(fqn) as sub:
        await write(hub, fqn, script)
        await wait_for_message(sub, all_seen)


async def test_query_filters(home: Path) -> None:
    async with running_hub(home) as hub:
        for fqn in INSTANCES:
            hub.follow(fqn)
        for fqn in INSTANCES:
            script = f"echo '{fqn} one'; echo 'ERROR: {fqn} two' >&2"
            await _emit(hub, fqn, script, f"{fqn} one", f"ERROR: {fqn} two")
        middle = datetime.now(UTC)
        for fqn in INSTANCES:
            await _emit(hub, fqn, f"echo '[debug] {fqn} three'", f"[debug] {fqn} three")

        def fqns(pattern: str | None) -> set[str]:
            return {line.service_fqn for line in hub.query(pattern)}

        assert fqns(None) == set(INSTANCES)
        assert fqns("*") == set(INSTANCES)
        assert fqns("web") == {"proj:web#1", "proj:web#2", "other:web"}
        assert fqns("proj:*") == {"proj:web#1", "proj:web#2", "proj:api"}
        assert fqns("proj:web") == {"proj:web#1", "proj:web#2"}
        assert fqns("proj:web#2") == {"proj:web#2"}
        assert fqns("*:api") == {"proj:api"}
        assert fqns("nothing") == set()

        everything = hub.query()
        assert len(everything) == 12
        assert [line.timestamp for line in everything] == sorted(line.timestamp for line in everything)

        # lines = the last N after filtering, oldest first.
        assert messages(hub.query("proj:web#1", lines=2)) == [
            messages(hub.query("proj:web#1"))[1],
            "[debug] proj:web#1 three",
        ]
        assert messages(hub.query(lines=1)) == [everything[-1].message]
        assert hub.query(lines=0) == []
        assert len(hub.query(lines=1000)) == 12

        # since: timestamp >= since (naive datetimes are taken as UTC).
        after = hub.query(since=middle)
        assert {line.message for line in after} == {f"[debug] {fqn} three" for fqn in INSTANCES}
        assert len(hub.query(since=middle.replace(tzinfo=None))) == 4

        # level: the minimum level.
        assert {line.level for line in hub.query(level=LogLevel.ERROR)} == {"error"}
        assert len(hub.query(level="error")) == 4
        assert len(hub.query(level="warning")) == 4  # aliases work
        assert len(hub.query(level="info")) == 8
        assert len(hub.query(level="trace")) == 12
        assert messages(hub.query("proj:web", level="error", lines=1)) == [
            "ERROR: proj:web#2 two"
        ]
        # All together.
        assert hub.query("web", lines=2, since=middle, level="error") == []
        with pytest.raises(ValueError, match="unknown log level"):
            hub.query(level="loud")


async def test_subscribe_tail_then_live(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        await _emit(hub, fqn, "for i in 1 2 3 4 5; do echo old$i; done", "old5")
        with hub.subscribe("web", tail=3) as sub:
            assert [(await sub.get()).message for _ in range(3)] == ["old3", "old4", "old5"]
            assert sub.pending == 0
            await write(hub, fqn, "echo new1; echo new2")
            assert messages(await wait_for_message(sub, "new2")) == ["new1", "new2"]
            assert sub.take_dropped() == 0


async def test_subscribe_level_and_pattern(home: Path) -> None:
    async with running_hub(home) as hub:
        hub.follow("proj:web")
        hub.follow("proj:api")
        with hub.subscribe("proj:web", level="warn") as sub, hub.subscribe("proj:web") as every:
            await write(hub, "proj:api", "echo 'ERROR: not mine'")
            await write(hub, "proj:web", "echo fine; echo 'WARN: hot'; echo '[error] down'")
            await wait_for_message(every, "[error] down")
            assert sub.pending == 2
            assert messages([await sub.get(), await sub.get()]) == ["WARN: hot", "[error] down"]


async def test_slow_reader_drops_oldest_and_counts(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=10) as slow, hub.subscribe(fqn, maxlen=1000) as fast:
            await write(hub, fqn, "i=1; while [ $i -le 100 ]; do echo line$i; i=$((i+1)); done")
            await wait_for_message(fast, "line100")
            # The slow reader read nothing meanwhile: it holds the newest 10.
            assert slow.pending == 10
            assert slow.take_dropped() == 90
            assert slow.take_dropped() == 0
            got = [slow.get_nowait() for _ in range(10)]
            assert messages([line for line in got if line]) == [f"line{i}" for i in range(91, 101)]
            # It keeps working after the drops.
            await write(hub, fqn, "echo more")
            assert (await wait_for_message(slow, "more"))[-1].message == "more"
            assert fast.take_dropped() == 0


async def test_tail_larger_than_maxlen_is_not_a_drop(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        for i in range(50):
            hub.note(fqn, f"n{i}")
        with hub.subscribe(fqn, tail=40, maxlen=5) as sub:
            assert sub.pending == 40
            assert sub.take_dropped() == 0
            assert (await sub.get()).message == "n10"
