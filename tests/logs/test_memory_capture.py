"""Memory captures (script services' output in memfds): followed, resumed by a later hub
through /proc/PID/fd, and followed per run when two runs of one instance overlap."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from hive_client import LogLine
from runners._capture import MemoryCapture, reopen_capture
from tests.logs.helpers import running_hub, wait_for_message
from tests.support import wait_for

pytestmark = pytest.mark.anyio


def _cat(capture: MemoryCapture) -> subprocess.Popen[bytes]:
    """A child echoing its stdin into the memory capture (as a service would write)."""
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=capture.writer, start_new_session=True)
    capture.close_writer()
    return child


def _say(child: subprocess.Popen[bytes], text: str) -> None:
    assert child.stdin is not None
    child.stdin.write(text.encode() + b"\n")
    child.stdin.flush()


async def test_a_later_hub_reopens_the_capture_and_resumes_where_the_last_one_stopped(home: Path) -> None:
    fqn = "proj:web"
    capture = MemoryCapture(fqn, "stdout")
    child = _cat(capture)
    try:
        async with running_hub(home) as hub:
            hub.follow(fqn, output=(capture.reader, -1), owner=child)
            with hub.subscribe(fqn) as sub:
                for i in range(3):
                    _say(child, f"before {i}")
                await wait_for_message(sub, "before 2")
            offsets = hub.offsets(fqn, child)
        # No hub runs (a killed daemon): the service writes on, into memory.
        _say(child, "meanwhile")
        reopened = reopen_capture(child.pid, 1, fqn, "stdout")
        assert reopened >= 0
        assert reopen_capture(child.pid, 1, "proj:other", "stdout") == -1  # not its capture
        async with running_hub(home / "second") as hub:
            with hub.subscribe(fqn) as sub:
                hub.follow(fqn, offsets, output=(reopened, -1), owner=child)
                _say(child, "after")
                await wait_for_message(sub, "after")
            got = [line.message for line in hub.query(fqn) if line.stream == "stdout"]
        assert got == ["meanwhile", "after"]  # nothing read twice, nothing lost
    finally:
        child.kill()
        child.wait()


async def test_two_runs_of_one_instance_are_followed_side_by_side(home: Path) -> None:
    fqn = "proj:web"
    first, second = MemoryCapture(fqn, "stdout"), MemoryCapture(fqn, "stdout")
    old, new = _cat(first), _cat(second)
    try:
        async with running_hub(home) as hub:
            hub.follow(fqn, output=(first.reader, -1), owner=old)
            hub.follow(fqn, output=(second.reader, -1), owner=new)
            assert hub.stats()["followed_files"] == 2
            with hub.subscribe(fqn) as sub:
                _say(old, "from the old run")
                _say(new, "from the new run")
                seen: set[str] = set()

                def both(line: LogLine) -> bool:  # two files: either may be read first
                    seen.add(line.message)
                    return {"from the old run", "from the new run"} <= seen

                await wait_for_message(sub, both)
                # The old run ends: its capture alone is let go (descriptor closed).
                old.stdin.close()  # type: ignore[union-attr]
                old.wait()
                await hub.drain(fqn)
                hub.unfollow(fqn, old)
                assert hub.stats()["followed_files"] == 1
                _say(new, "still heard")
                await wait_for_message(sub, "still heard")
            hub.unfollow(fqn)
            assert hub.stats()["followed_files"] == 0
    finally:
        for child in (old, new):
            child.kill()
            child.wait()


def test_a_capture_is_found_in_the_group_when_the_main_process_let_go_of_it() -> None:
    """The main process redirected its output (``exec >/dev/null``) while a child of its
    group still writes to the memory capture: a later daemon finds the capture there."""
    fqn = "proj:bg"
    capture = MemoryCapture(fqn, "stdout")
    script = "(while :; do echo x; sleep 0.05; done) & exec >/dev/null; exec sleep 1000"
    main = subprocess.Popen(["sh", "-c", script], stdout=capture.writer, start_new_session=True)
    capture.close_writer()
    try:
        def redirected() -> bool:
            return os.readlink(f"/proc/{main.pid}/fd/1") == "/dev/null"

        wait_for(redirected, timeout=10, what="the main process to redirect its output")
        assert reopen_capture(main.pid, 1, fqn, "stdout") == -1  # not at fd 1 any more
        fd = reopen_capture(main.pid, 1, fqn, "stdout", pgid=main.pid)
        assert fd >= 0
        try:
            wait_for(lambda: os.fstat(fd).st_size > 0, timeout=10, what="the child's lines in the capture")
        finally:
            os.close(fd)
    finally:
        os.killpg(main.pid, signal.SIGKILL)
        main.wait()
        capture.close()
