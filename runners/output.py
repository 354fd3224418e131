"""Reading a process's output line by line (hook steps, one-shot containers)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence

import anyio
import anyio.abc

from .base import RunnerError

__all__ = ["Lines", "pump_lines", "run_streaming"]


def _decode(raw: bytes | bytearray) -> str:
    text = bytes(raw).decode("utf-8", "replace")
    return text[:-1] if text.endswith("\r") else text


class Lines:
    """``emit(name, line)`` for each line of the chunks fed (decoded, invalid UTF-8
    replaced); a line longer than ``cap`` bytes is cut to its first ``cap``."""

    def __init__(self, name: str, emit: Callable[[str, str], None], cap: int) -> None:
        self.name, self.emit, self.cap = name, emit, cap
        self.buffer = bytearray()
        self.skipping = False  # dropping the rest of an over-long line

    def feed(self, chunk: bytes) -> None:
        buffer, cap = self.buffer, self.cap
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) >= cap:
                    if not self.skipping:
                        self.emit(self.name, _decode(buffer[:cap]))
                        self.skipping = True
                    buffer.clear()
                return
            line = buffer[: min(newline, cap)]
            del buffer[: newline + 1]
            if self.skipping:
                self.skipping = False
                continue
            self.emit(self.name, _decode(line))

    def end(self) -> None:
        """The last line, if it had no newline."""
        if self.buffer and not self.skipping:
            self.emit(self.name, _decode(self.buffer[: self.cap]))
        self.buffer.clear()


async def pump_lines(
    stream: anyio.abc.ByteReceiveStream, name: str, emit: Callable[[str, str], None], cap: int
) -> None:
    """``emit(name, line)`` for each of ``stream``'s lines as they come (see :class:`Lines`)."""
    lines = Lines(name, emit, cap)
    try:
        async for chunk in stream:
            lines.feed(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    lines.end()


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
