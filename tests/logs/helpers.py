"""Helpers for the log pipeline tests: a running hub, real writer processes, waits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import Process

from hive.daemon.logs import LogHub, LogSubscription
from hive.daemon.settings import LogsSection
from hive_client import LogLine


@asynccontextmanager
async def running_hub(home: Path, *, hub_options: dict[str, Any] | None = None,
                      **settings: int) -> AsyncIterator[LogHub]:
    """A LogHub on ``home/logs`` and ``home/run``, running until the block ends."""
    hub = LogHub(home / "logs", home / "run", LogsSection(**settings), **(hub_options or {}))
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        try:
            yield hub
        finally:
            tg.cancel_scope.cancel()


def open_captures(hub: LogHub, fqn: str) -> tuple[int, int]:
    """The instance's capture files opened the way the daemon hands them to a child."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    out, err = hub.capture_paths(fqn)
    return os.open(out, flags, 0o600), os.open(err, flags, 0o600)


async def write(hub: LogHub, fqn: str, script: str) -> None:
    """Run ``sh -c script`` with stdout/stderr on the instance's capture files."""
    out, err = open_captures(hub, fqn)
    try:
        await anyio.run_process(["sh", "-c", script], stdout=out, stderr=err)
    finally:
        os.close(out)
        os.close(err)


@asynccontextmanager
async def writer(hub: LogHub, fqn: str, argv: list[str]) -> AsyncIterator[Process]:
    """A long-running child on the capture files, with a pipe on its stdin."""
    out, err = open_captures(hub, fqn)
    try:
        async with await anyio.open_process(argv, stdout=out, stderr=err) as process:
            try:
                yield process
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        os.close(out)
        os.close(err)


async def wait_for_message(
    sub: LogSubscription, match: str | Callable[[LogLine], bool], timeout: float = 10.0
) -> list[LogLine]:
    """Lines from ``sub`` up to and including the first one that matches."""
    seen: list[LogLine] = []
    with anyio.fail_after(timeout):
        while True:
            line = await sub.get()
            seen.append(line)
            if (line.message == match) if isinstance(match, str) else match(line):
                return seen


def rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


def messages(lines: list[LogLine]) -> list[str]:
    return [line.message for line in lines]
