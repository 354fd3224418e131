"""Adoption: a daemon started later takes over what a killed daemon left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
import pytest

from runners.base import ExitStatus, RunnerError, RunSpec
from runners.script import ScriptRunner
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import alive, output_contains, tag_of, tagged, until

pytestmark = pytest.mark.anyio

HELPER = Path(__file__).with_name("start_service.py")


def start_elsewhere(spec: RunSpec, *, kill9: bool = True) -> dict[str, Any]:
    """Start ``spec`` in another Python process that then dies; the service's record."""
    argv = [sys.executable, str(HELPER), msgspec.json.encode(spec).decode()]
    result = subprocess.run([*argv, *(["--kill9"] if kill9 else [])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == (-signal.SIGKILL if kill9 else 0), result.stderr
    record: dict[str, Any] = json.loads(result.stdout)
    return record


async def test_record_shape(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 1000"))
    record = handle.record()
    assert json.loads(json.dumps(record)) == record  # plain JSON
    assert record["pid"] == handle.pid == record["pgid"]
    assert record["start_time"] == psutil.Process(handle.pid).create_time()
    assert isinstance(record["start_time"], float)
    await handle.stop(signal.SIGTERM, 5)


async def test_adopt_then_wait_sees_the_exit(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sleep 1000")
    record = start_elsewhere(made)
    pid = record["pid"]
    assert alive(pid)  # the starter died with SIGKILL; the service did not
    handle = await runner.adopt(made, record)
    assert handle is not None
    assert handle.pid == pid
    assert handle.adopted
    assert handle.record()["start_time"] == record["start_time"]
    async with anyio.create_task_group() as group:
        results: list[ExitStatus] = []

        async def waiter() -> None:
            results.append(await handle.wait())

        group.start_soon(waiter)
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert results == []
        os.kill(pid, signal.SIGKILL)
    # Not our child: the exit is seen, its status belongs to its real parent.
    assert results == [ExitStatus()] * 2
    assert "adopted" in results[0].describe()


async def test_adopt_then_stop_the_whole_tree(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sh -c 'sleep 1000 & setsid -f sleep 1000; echo ready; wait'")
    record = start_elsewhere(made)
    await output_contains(made.stdout_path, "ready")
    tag = tag_of(made)
    await until(lambda: len(tagged(tag)) == 3, what="the service's three processes")
    handle = await runner.adopt(made, record)
    assert handle is not None
    with anyio.fail_after(10):
        status = await handle.stop(signal.SIGTERM, 5)
    assert status == ExitStatus()
    assert tagged(tag) == []


async def test_adopt_after_a_clean_exit_of_the_starter(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sleep 1000")
    record = start_elsewhere(made, kill9=False)
    handle = await runner.adopt(made, record)
    assert handle is not None
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)
    assert not alive(record["pid"])


async def test_adopt_refuses_a_gone_process(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sleep 1000")
    record = start_elsewhere(made)
    os.kill(record["pid"], signal.SIGKILL)
    await until(lambda: not alive(record["pid"]), what="the process to die")
    assert await runner.adopt(made, record) is None


async def test_adopt_refuses_a_reused_pid(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sleep 1000")
    record = start_elsewhere(made)
    # The same pid with another start time: another process now holds the number.
    assert await runner.adopt(made, {**record, "ticks": record["ticks"] - 1}) is None
    assert await runner.adopt(made, {**record, "boot_id": "another-boot"}) is None
    legacy = {"pid": record["pid"], "pgid": record["pgid"], "start_time": record["start_time"]}
    assert await runner.adopt(made, {**legacy, "start_time": record["start_time"] - 5}) is None
    # A record with only psutil's start time (no ticks) is still matched.
    handle = await runner.adopt(made, legacy)
    assert handle is not None
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)


def unreaped_child() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["true"])


async def test_adopt_refuses_a_zombie(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("true")
    child = unreaped_child()  # not reaped until the end: a zombie meanwhile
    try:
        await until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
                    what="a zombie")
        record = {"pid": child.pid, "pgid": child.pid,
                  "start_time": psutil.Process(child.pid).create_time()}
        assert await runner.adopt(made, record) is None
    finally:
        child.wait()


async def test_adopt_rejects_a_foreign_record(runner: ScriptRunner, spec: SpecFactory) -> None:
    with pytest.raises(RunnerError, match="not a script runner process record"):
        await runner.adopt(spec("true"), {"container_id": "abc"})
    assert await runner.adopt(spec("true"), {"pid": 2**22 + 12345, "start_time": 1.0}) is None


async def test_discover_finds_an_unrecorded_start(
    runner: ScriptRunner, spec: SpecFactory, home: Path
) -> None:
    marker = str(home)  # the daemon's home, as the daemon passes it
    made = spec("sh -c 'setsid -f sleep 1000; sleep 1000 & wait'", fqn="proj:web#1")
    made.env["HIVE_SUPERVISOR"] = marker
    record = start_elsewhere(made)
    await until(lambda: len(tagged(tag_of(made))) == 3, what="the service's processes")
    found = await runner.discover(made, marker)
    assert [r["pid"] for r in found] == [record["pid"]]  # the main, not the setsid'd child
    assert found[0]["run_id"] == record["run_id"]
    assert await runner.discover(made, marker + "-another-home") == []
    other = msgspec.structs.replace(made, fqn="proj:web#2")
    assert await runner.discover(other, marker) == []
    handle = await runner.adopt(made, found[0])
    assert handle is not None
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)
    assert tagged(tag_of(made)) == []
