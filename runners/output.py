"""Reading a process's output line by line (hook steps, one-shot containers)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc

from .base import RunnerError

__all__ = ["pump_lines", "run_streaming"]


def _decode(raw: bytes | bytearray) -> str:
    text = bytes(raw).decode("utf-8", "replace")
    return text[:-1] if text.endswith("\r") else text


async def pump_lines(
    stream: anyio.abc.ByteReceiveStream, name: str, emit: Callable[[str, str], None], cap: int
) -> None:
    """``emit(name, line)`` for each of ``stream``'s lines as they come (decoded, invalid
    UTF-8 replaced); a line longer than ``cap`` bytes is cut to its first ``cap``."""
    buffer = bytearray()
    skipping = False  # dropping the rest of an over-long line
    try:
        async for chunk in stream:
            buffer += chunk
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) >= cap:
                        if not skipping:
                            emit(name, _decode(buffer[:cap]))
                            skipping = True
                        buffer.clear()
                    break
                line = buffer[: min(newline, cap)]
                del buffer[: newline + 1]
                if skipping:
                    skipping = False
                    continue
                emit(name, _decode(line))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    if buffer and not skipping:
        emit(name, _decode(buffer[:cap]))


async def run_streaming(
    argv: Sequence[str], *, env: Mapping[str, str] | None, output: Callable[[str, str], None],
    cap: int, cwd: str | None = None, stdin: bytes | None = None,
) -> int:
    """Run ``argv`` to its end, its lines to ``output``; the exit code. ``stdin``: what
    it reads on its standard input (else nothing). A program that cannot be started is
    a RunnerError."""
    try:
        process = await anyio.open_process(
            list(argv), env=dict(env) if env else None, cwd=cwd or None,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise RunnerError(f"cannot run {argv[0]}: {exc.strerror}") from None
    async with process, anyio.create_task_group() as pumps:
        if process.stdin is not None:
            pumps.start_soon(_feed, process.stdin, stdin or b"")
        for stream, which in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            if stream is not None:
                pumps.start_soon(pump_lines, stream, which, output, cap)
    return await process.wait()


async def _feed(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    """Write ``data`` and close: the program sees its end (one that exits first only
    leaves it unread)."""
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()
