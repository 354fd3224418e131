"""Following capture files: streams, levels, partial and long lines, encodings."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import anyio
import pytest

from hive.daemon.logs import LogHub
from tests.logs.helpers import (
    messages,
    open_captures,
    rss,
    running_hub,
    wait_for_message,
    write,
    writer,
)
from tests.support import wait_until

pytestmark = pytest.mark.anyio


async def test_both_streams_arrive_with_stream_and_level(home: Path) -> None:
    async with running_hub(home) as hub:
        hub.follow("proj:web#2")
        with hub.subscribe("web") as sub:
            await write(
                hub,
                "proj:web#2",
                "echo hello; echo 'ERROR: bad thing' >&2; echo '[WARN] careful';"
                " echo 'plain stderr' >&2",
            )
            seen = []
            with anyio.fail_after(10):
                while len(seen) < 4:
                    seen.append(await sub.get())
    by_message = {line.message: line for line in seen}
    assert set(by_message) == {"hello", "ERROR: bad thing", "[WARN] careful", "plain stderr"}
    assert (by_message["hello"].stream, by_message["hello"].level) == ("stdout", "info")
    assert (by_message["ERROR: bad thing"].stream, by_message["ERROR: bad thing"].level) == (
        "stderr",
        "error",
    )
    assert by_message["[WARN] careful"].level == "warn"
    # Hive's default for stderr without a marker is info, like stdout.
    assert (by_message["plain stderr"].stream, by_message["plain stderr"].level) == (
        "stderr",
        "info",
    )
    for line in seen:
        assert line.service_fqn == "proj:web#2"
        assert line.timestamp.tzinfo is not None
        assert line.fields is None
    # Per stream, order is kept.
    assert [m for m in messages(seen) if m in ("hello", "[WARN] careful")] == [
        "hello",
        "[WARN] careful",
    ]


async def test_capture_paths_are_stable_and_safe(home: Path) -> None:
    async with running_hub(home) as hub:
        out, err = hub.capture_paths("proj:web#2")
        assert (out, err) == hub.capture_paths("proj:web#2")
        assert out.parent == err.parent == home / "run" / "proj"
        assert out != err
        assert hub.log_path("proj:web#2") == home / "logs" / "proj" / "web#2.log"
        odd_out, _ = hub.capture_paths("../x:y/z")
        assert odd_out.resolve().is_relative_to((home / "run").resolve())


async def test_json_lines_keep_their_fields(home: Path) -> None:
    async with running_hub(home) as hub:
        hub.follow("proj:api")
        with hub.subscribe("proj:api") as sub:
            await write(hub, "proj:api", """echo '{"level":"warn","msg":"slow","ms":812}'""")
            (line,) = await wait_for_message(sub, "slow")
    assert (line.level, line.message, line.fields) == ("warn", "slow", {"ms": 812})


async def test_partial_lines_wait_for_their_newline_and_drain_flushes(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            await write(hub, fqn, "printf 'one\\ntw'")
            await wait_for_message(sub, "one")
            # "tw" has no newline yet: not a line, and not counted as consumed.
            assert messages(hub.query(fqn)) == ["one"]
            assert hub.offsets(fqn) == (4, 0)
            await write(hub, fqn, "printf 'o\\nthree'; printf 'err-tail' >&2")
            await wait_for_message(sub, "two")
            assert messages(hub.query(fqn)) == ["one", "two"]
            # The process is gone: drain turns the unterminated rest into lines.
            await hub.drain(fqn)
            assert sorted(messages(hub.query(fqn))[2:]) == ["err-tail", "three"]
            assert hub.offsets(fqn) == (len(b"one\ntwo\nthree"), len(b"err-tail"))
            hub.unfollow(fqn)
            assert hub.offsets(fqn) == (len(b"one\ntwo\nthree"), len(b"err-tail"))


async def test_long_lines_are_cut_and_keep_their_level(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home, max_line_bytes=1024) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=100) as sub:
            # 5000 bytes after "ERROR: ", a 2-byte character across the first cut, then more.
            script = (
                "printf 'ERROR: '; head -c 1016 /dev/zero | tr '\\0' a; printf '\\303\\251';"
                " head -c 3982 /dev/zero | tr '\\0' b; printf '\\nafter\\n'"
            )
            await write(hub, fqn, script)
            seen = await wait_for_message(sub, "after")
    pieces, after = seen[:-1], seen[-1]
    assert [len(line.message.encode()) for line in pieces] == [1023, 1024, 1024, 1024, 912]
    assert "".join(messages(pieces)) == "ERROR: " + "a" * 1016 + "é" + "b" * 3982
    assert "\ufffd" not in "".join(messages(pieces))  # not cut inside "é"
    assert {line.level for line in pieces} == {"error"}
    assert after.level == "info"


async def test_a_50mb_line_without_newline_keeps_memory_bounded(home: Path) -> None:
    fqn = "proj:web"
    size = 50_000_000
    limit = 64 * 1024
    options = {"max_backlog_bytes": 1 << 30}  # read all of it, skip nothing
    async with running_hub(
        home, hub_options=options, buffer_lines=8, max_line_bytes=limit, max_file_bytes=4 << 20,
        keep_files=1,
    ) as hub:
        hub.follow(fqn)
        gc.collect()
        baseline = rss()
        peak = baseline
        before = hub.stats()["lines"]
        with hub.subscribe(fqn, maxlen=4) as sub:

            async def watch_memory() -> None:
                nonlocal peak
                async for _line in sub:
                    peak = max(peak, rss())

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_memory)
                await write(hub, fqn, f"head -c {size} /dev/zero | tr '\\0' x")
                await hub.drain(fqn)
                sub.close()
        peak = max(peak, rss())
        assert hub.stats()["lines"] - before == -(-size // limit)  # 763 pieces
        assert hub.offsets(fqn) == (size, 0)
        kept = hub.query(fqn)
        assert len(kept) == 8
        assert {len(line.message) for line in kept[:-1]} == {limit}
    growth = peak - baseline
    print(f"50 MB line: RSS growth {growth / 2**20:.1f} MiB (limit 16 MiB)")
    assert growth < 16 * 2**20


async def test_invalid_utf8_and_crlf(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            await write(hub, fqn, "printf 'ok \\377\\376 end\\r\\nwindows\\r\\n\\n'; echo done")
            seen = await wait_for_message(sub, "done")
        assert messages(seen) == ["ok \ufffd\ufffd end", "windows", "", "done"]
        # The file keeps the bytes as they were (minus the \r).
        data = hub.log_path(fqn).read_bytes()
        assert b" stdout info ok \xff\xfe end\n" in data
        assert b"\r" not in data


async def test_files_written_before_follow_are_read(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        await write(hub, fqn, "echo early")
        with hub.subscribe(fqn) as sub:
            hub.follow(fqn)
            await wait_for_message(sub, "early")


async def test_live_lines_from_a_running_process(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            argv = ["sh", "-c", "echo first; read go; echo second; read go; echo third"]
            async with writer(hub, fqn, argv) as process:
                assert process.stdin is not None
                await wait_for_message(sub, "first")
                await process.stdin.send(b"go\n")
                await wait_for_message(sub, "second")
                await process.stdin.send(b"go\n")
                await wait_for_message(sub, "third")
                assert await process.wait() == 0
            await hub.drain(fqn)
        assert messages(hub.query(fqn)) == ["first", "second", "third"]


async def test_notes_and_forget(home: Path) -> None:
    async with running_hub(home) as hub:
        for fqn in ("proj:web#1", "proj:web#2", "proj:api"):
            hub.note(fqn, f"started {fqn}")
        hub.note("proj:web#1", "crashed (exit 3)", level="error")
        lines = hub.query("proj:web#1")
        assert [(line.stream, line.level, line.message) for line in lines] == [
            ("hive", "info", "started proj:web#1"),
            ("hive", "error", "crashed (exit 3)"),
        ]
        # Notes reach the file on the hub's next turn.
        path = hub.log_path("proj:web#1")
        await wait_until(lambda: path.exists() and b" hive error crashed (exit 3)\n" in path.read_bytes(),
                 what="the note in the log file")
        hub.forget("proj:web")
        assert hub.query("proj:web") == []
        assert messages(hub.query("proj:api")) == ["started proj:api"]
        assert hub.log_path("proj:web#1").exists()  # files stay


async def test_truncated_capture_file_is_read_from_the_start(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            await write(hub, fqn, "echo 'a fairly long first line'")
            await wait_for_message(sub, "a fairly long first line")
            out, _ = hub.capture_paths(fqn)
            os.truncate(out, 0)
            await write(hub, fqn, "echo new")
            seen = await wait_for_message(sub, "new")
        assert [line.stream for line in seen] == ["hive", "stdout"]
        assert "truncated" in seen[0].message


async def test_subscription_ends_when_the_hub_stops(home: Path) -> None:
    hub: LogHub
    async with running_hub(home) as hub:
        sub = hub.subscribe()
        hub.note("proj:web", "last words")
    assert (await sub.get()).message == "last words"
    with pytest.raises(anyio.EndOfStream):
        await sub.get()


async def test_drain_right_after_a_write_finds_it_before_the_pump_does(home: Path) -> None:
    # A capture not opened yet (nothing written when it was followed) is judged by the
    # inotify queue at drain time; the write's event is queued, not yet read by the hub.
    fqn = "proj:quick"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        await hub.drain(fqn)  # nothing written: nothing read, nothing noted
        assert hub.query(fqn) == []
        out, err = open_captures(hub, fqn)
        try:
            os.write(out, b"last words\n")
            os.write(err, b"and a tail")
        finally:
            os.close(out)
            os.close(err)
        await hub.drain(fqn)  # no checkpoint in between: the pump has not run
        assert sorted(messages(hub.query(fqn))) == ["and a tail", "last words"]
        hub.unfollow(fqn)
