"""Log files: format, rotation, restart continuity, freeing capture bytes, full disks."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hive.daemon.logs import LogHub
from hive.daemon.logs._sys import punch_hole
from hive.daemon.settings import LogsSection
from tests.logs.helpers import messages, running_hub, wait_for_message, write
from tests.support import wait_until

pytestmark = pytest.mark.anyio

FILE_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (stdout|stderr|hive) "
    r"(trace|debug|info|notice|warn|error|fatal) .*"
)


def _numbered(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


async def test_file_format(home: Path) -> None:
    fqn = "proj:web#2"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            await write(hub, fqn, "echo hello; echo 'ERROR: x' >&2")
            await wait_for_message(sub, lambda _: sub.pending == 0 and len(hub.query(fqn)) == 2)
            hub.note(fqn, "stopped", level="warn")
        # Notes reach the file on the hub's next turn.
        path = home / "logs" / "proj" / "web#2.log"
        await wait_until(lambda: "hive warn stopped" in path.read_text(), what="the note in the log file")
        text = path.read_text()
    lines = text.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert FILE_LINE.fullmatch(line), line
    assert sorted(line.split(" ", 1)[1] for line in lines) == [
        "hive warn stopped",
        "stderr error ERROR: x",
        "stdout info hello",
    ]


async def test_rotation_keeps_at_most_keep_files(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home, max_file_bytes=4096, keep_files=2) as hub:
        hub.follow(fqn)
        path = hub.log_path(fqn)
        with hub.subscribe(fqn, maxlen=2000) as sub:
            await write(hub, fqn, "i=1; while [ $i -le 1000 ]; do echo line$i; i=$((i+1)); done")
            await wait_for_message(sub, "line1000")
        assert _numbered(path) == ["web.log.1", "web.log.2"]
        for file in (path, path.with_name("web.log.1"), path.with_name("web.log.2")):
            assert 0 < file.stat().st_size <= 4096
        # .1 is the newer of the old files, and the current file ends with the last line.
        newest = path.read_text().splitlines()
        older = path.with_name("web.log.1").read_text().splitlines()
        oldest = path.with_name("web.log.2").read_text().splitlines()
        assert newest[-1].endswith(" stdout info line1000")
        number = re.compile(r"line(\d+)$")

        def first(lines: list[str]) -> int:
            match = number.search(lines[0])
            assert match
            return int(match.group(1))

        assert first(oldest) < first(older) < first(newest)
        # More writing never leaves more than keep_files old files.
        with hub.subscribe(fqn, maxlen=2000) as sub:
            await write(hub, fqn, "i=1; while [ $i -le 500 ]; do echo again$i; i=$((i+1)); done")
            await wait_for_message(sub, "again500")
        assert _numbered(path) == ["web.log.1", "web.log.2"]


async def test_old_files_beyond_keep_are_pruned(home: Path) -> None:
    fqn = "proj:web"
    path = home / "logs" / "proj" / "web.log"
    path.parent.mkdir(parents=True)
    for index in range(1, 6):
        path.with_name(f"web.log.{index}").write_text("old\n")
    async with running_hub(home, keep_files=2) as hub:
        hub.note(fqn, "hello")
    assert _numbered(path) == ["web.log.1", "web.log.2"]


async def test_offsets_and_restart_continuity(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn, offsets=(0, 0))
        with hub.subscribe(fqn) as sub:
            await write(hub, fqn, "printf 'a1\\na2\\na3\\npart'; echo e1 >&2")
            await wait_for_message(sub, lambda _: len(hub.query(fqn)) == 4)
        saved = hub.offsets(fqn)
        # "part" has no newline: it is not consumed, so a successor reads it again.
        assert saved == (len(b"a1\na2\na3\n"), len(b"e1\n"))
    # The daemon is gone; the service keeps writing.
    await write(LogHub(home / "logs", home / "run", LogsSection()), fqn, "printf 'ial\\nb1\\nb2\\n'")
    # A new daemon: old lines come back from the log file, new ones follow them.
    async with running_hub(home) as hub:
        # Right after the restart, before following, `hive logs --tail` works.
        hub.restore(fqn)
        assert sorted(messages(hub.query(fqn, lines=10))) == ["a1", "a2", "a3", "e1"]
        with hub.subscribe(fqn) as sub:
            hub.follow(fqn, offsets=saved)
            await wait_for_message(sub, "b2")
        stdout = [line.message for line in hub.query(fqn) if line.stream == "stdout"]
        assert stdout == ["a1", "a2", "a3", "partial", "b1", "b2"]
        assert hub.offsets(fqn) == (len(b"a1\na2\na3\npartial\nb1\nb2\n"), len(b"e1\n"))
        # Every line is in the file exactly once.
        in_file = [line.split(" ", 3)[3] for line in hub.log_path(fqn).read_text().splitlines()]
        assert sorted(in_file) == sorted(["a1", "a2", "a3", "e1", "partial", "b1", "b2"])


async def test_preload_is_capped_at_1000_lines_and_reads_the_rotated_file(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home, max_file_bytes=20_000, keep_files=3) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=5000) as sub:
            await write(hub, fqn, "i=1; while [ $i -le 1500 ]; do echo line$i; i=$((i+1)); done")
            await wait_for_message(sub, "line1500")
        assert len(hub.query(fqn)) == 1500
    async with running_hub(home, max_file_bytes=20_000, keep_files=3) as hub:
        hub.restore(fqn)
        assert messages(hub.query(fqn)) == [f"line{i}" for i in range(501, 1501)]
        assert hub.query(fqn)[0].timestamp <= hub.query(fqn)[-1].timestamp
    async with running_hub(home, buffer_lines=10) as hub:
        hub.restore(fqn)
        assert messages(hub.query(fqn)) == [f"line{i}" for i in range(1491, 1501)]


def _punch_supported(directory: Path) -> bool:
    probe = directory / "punch-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 65536)
        return punch_hole(fd, 0, 4096)
    finally:
        os.close(fd)
        probe.unlink()


async def test_consumed_capture_bytes_are_freed(home: Path) -> None:
    if not _punch_supported(home):
        pytest.skip("this filesystem cannot punch holes (fallocate EOPNOTSUPP)")
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=10) as sub:
            await write(hub, fqn, "head -c 8000000 /dev/zero | tr '\\0' x | fold -w 99; echo; echo end")
            await wait_for_message(sub, "end", timeout=30)
        await hub.drain(fqn)
        out, _ = hub.capture_paths(fqn)
        info = out.stat()
        assert info.st_size > 8_000_000  # offsets stay valid: the size is kept
        assert info.st_blocks * 512 <= 64 * 1024  # but the space is given back
        assert hub.offsets(fqn)[0] == info.st_size


async def test_write_errors_keep_lines_in_memory_and_writing_resumes(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk, without root: the log file is a symlink to /dev/full (ENOSPC)."""
    caplog.set_level(logging.INFO, logger="hive.logs")
    fqn = "proj:web"
    async with running_hub(home) as hub:
        path = hub.log_path(fqn)
        path.parent.mkdir(parents=True)
        path.symlink_to("/dev/full")
        hub.follow(fqn)
        with hub.subscribe(fqn) as sub:
            for i in range(3):
                await write(hub, fqn, f"echo line{i}")
                await wait_for_message(sub, f"line{i}")
            assert hub.write_errors >= 3
            assert messages([line for line in hub.query(fqn) if line.stream != "hive"]) == ["line0", "line1", "line2"]
            # Counted, and the service's log says why (in memory: the file cannot take it).
            assert hub.dropped_lines >= 3 and hub.write_error is not None
            notes = [line.message for line in hub.query(fqn) if line.stream == "hive"]
            assert any("cannot write the log file" in n and "No space left on device" in n for n in notes), notes
            errors = [r for r in caplog.records if r.name == "hive.logs" and r.levelno >= logging.ERROR]
            assert len(errors) == 1  # logged once, not per write
            assert "No space left on device" in errors[0].getMessage()
            # Room again (the symlink goes away): the next lines reach the file.
            path.unlink()
            await write(hub, fqn, "echo back")
            await wait_for_message(sub, "back")
        written = path.read_text().splitlines()
        assert [line for line in written if " stdout " in line][-1].endswith(" stdout info back")
        # The file says how many lines it lacks, and why.
        assert any("can be written again: " in line and "No space left on device" in line for line in written)
        assert hub.write_error is None
        assert any("works again" in r.getMessage() for r in caplog.records)


@pytest.fixture
def tiny_tmpfs(home: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = home / "logs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _remount(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{size}", str(mount_point)], check=True, capture_output=True)


async def test_enospc_on_a_real_full_filesystem(
    home: Path, tiny_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hive.logs")
    fqn = "proj:web"
    async with running_hub(home) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=5000) as sub:
            # ~190 KB of lines into a 64 KiB filesystem.
            script = "i=1; while [ $i -le 3000 ]; do echo \"line $i $(printf '%050d' 0)\"; i=$((i+1)); done"
            await write(hub, fqn, script)
            await wait_for_message(sub, lambda line: line.message.startswith("line 3000 "))
            assert hub.write_errors >= 1
            assert len([line for line in hub.query(fqn) if line.stream != "hive"]) == 3000  # memory has everything
            errors = [r for r in caplog.records if r.name == "hive.logs" and r.levelno >= logging.ERROR]
            assert len(errors) == 1
            # The disk grows: writing resumes, on a line of its own.
            _remount(tiny_tmpfs, "size=4m")
            await write(hub, fqn, "echo back")
            await wait_for_message(sub, "back")
        lines = hub.log_path(fqn).read_bytes().split(b"\n")
        assert lines[-1] == b""
        back = [line for line in lines if b" stdout " in line][-1]
        assert back.endswith(b" stdout info back")
        assert all(FILE_LINE.fullmatch(line.decode()) for line in lines[-3:-1])
        assert any("works again" in r.getMessage() for r in caplog.records)


async def test_room_found_by_one_log_file_ends_every_failing_files_episode(home: Path, tiny_tmpfs: Path) -> None:
    """Two services fill the disk; space returns and only one writes again. The other
    (a crashed service in its backoff) must not keep the hub at NOT STORED: its file is
    on the same file system, so it is written again too, with the note of what it lost."""
    flood = "i=1; while [ $i -le 2000 ]; do echo \"line $i $(printf '%050d' 0)\"; i=$((i+1)); done"
    async with running_hub(home) as hub:
        for fqn in ("proj:quiet", "proj:web"):
            hub.follow(fqn)
            with hub.subscribe(fqn, maxlen=5000) as sub:
                await write(hub, fqn, flood + "; echo done")
                await wait_for_message(sub, "done")
        assert hub.write_error is not None
        _remount(tiny_tmpfs, "size=4m")
        with hub.subscribe("proj:web", maxlen=5000) as sub:
            await write(hub, "proj:web", "echo back")
            await wait_for_message(sub, "back")
        await wait_until(lambda: hub.write_error is None, timeout=10, what="the hub to see every file written again")
        await wait_until(lambda: "can be written again: " in hub.log_path("proj:quiet").read_text(), timeout=10,
                         what="the quiet service's file to say what it lost")


async def test_following_again_after_a_service_restart_does_not_duplicate(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        for run, offsets in ((1, (0, 0)), (2, (0, 0)), (3, None)):
            # Capture files are appended to across runs; the daemon follows each run.
            with hub.subscribe(fqn) as sub:
                hub.follow(fqn, offsets=offsets)
                await write(hub, fqn, f"echo run{run}; echo err{run} >&2")
                await wait_for_message(sub, f"run{run}")
            await hub.drain(fqn)
            hub.unfollow(fqn)
        assert sorted(messages(hub.query(fqn))) == sorted(
            ["run1", "run2", "run3", "err1", "err2", "err3"]
        )
        out, err = hub.capture_paths(fqn)
        assert hub.offsets(fqn) == (out.stat().st_size, err.stat().st_size)
        in_file = [line.split(" ", 3)[3] for line in hub.log_path(fqn).read_text().splitlines()]
        assert sorted(in_file) == sorted(messages(hub.query(fqn)))


async def test_a_replaced_capture_file_is_read_from_its_start(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home) as hub:
        with hub.subscribe(fqn) as sub:
            hub.follow(fqn)
            await write(hub, fqn, "echo 'first run, a long line'")
            await wait_for_message(sub, "first run, a long line")
            await hub.drain(fqn)
            hub.unfollow(fqn)
            out, _ = hub.capture_paths(fqn)
            out.unlink()
            await write(hub, fqn, "echo second")
            hub.follow(fqn)
            await wait_for_message(sub, "second")


async def test_stopped_services_show_their_logs_after_a_daemon_restart(home: Path) -> None:
    async with running_hub(home) as hub:
        for fqn in ("proj:web#1", "proj:web#2", "other:web", "proj:api"):
            hub.follow(fqn)
            with hub.subscribe(fqn) as sub:
                await write(hub, fqn, f"echo 'hello from {fqn}'")
                await wait_for_message(sub, f"hello from {fqn}")
    # A new daemon; nobody follows or restores anything yet.
    async with running_hub(home) as hub:
        assert messages(hub.query("proj:web#2")) == ["hello from proj:web#2"]
        assert sorted(messages(hub.query("proj:web"))) == [
            "hello from proj:web#1",
            "hello from proj:web#2",
        ]
        assert {line.service_fqn for line in hub.query("web")} == {
            "proj:web#1",
            "proj:web#2",
            "other:web",
        }
        with hub.subscribe("proj:api", tail=5) as sub:
            assert (await sub.get()).message == "hello from proj:api"
        # What was forgotten stays forgotten, though its files remain.
        hub.forget("proj:web")
        assert hub.query("proj:web") == []
        assert hub.log_path("proj:web#1").exists()
    # Forgetting a deleted service this hub never loaded works too.
    async with running_hub(home) as hub:
        hub.forget("other:web")
        assert hub.query("other:web") == []
        assert {line.service_fqn for line in hub.query("web")} == {"proj:web#1", "proj:web#2"}


async def test_reconfigure_applies_new_limits(home: Path) -> None:
    fqn = "proj:web"
    async with running_hub(home, max_file_bytes=2000, keep_files=5) as hub:
        hub.follow(fqn)
        with hub.subscribe(fqn, maxlen=2000) as sub:
            await write(hub, fqn, "i=1; while [ $i -le 600 ]; do echo line$i; i=$((i+1)); done")
            await wait_for_message(sub, "line600")
            path = hub.log_path(fqn)
            assert len(_numbered(path)) == 5
            hub.reconfigure(LogsSection(max_file_bytes=8000, keep_files=2, buffer_lines=100))
            assert _numbered(path) == ["web.log.1", "web.log.2"]  # pruned at once
            assert len(hub.query(fqn)) == 100
            await write(hub, fqn, "i=1; while [ $i -le 600 ]; do echo more$i; i=$((i+1)); done")
            await wait_for_message(sub, "more600")
        assert _numbered(path) == ["web.log.1", "web.log.2"]
        assert 2000 < path.with_name("web.log.1").stat().st_size <= 8000
        assert len(hub.query(fqn)) == 100
