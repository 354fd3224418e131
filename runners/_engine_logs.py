"""A container's output from the engine's logs endpoint, into the capture files.

The endpoint sends frames: an 8-byte header (stream: 1 stdout, 2 stderr; then the size,
big-endian, in bytes 4-7) and the payload. The follower asks for ``timestamps=1``: each
payload starts with the time the engine stamped it (RFC 3339: Docker to the nanosecond,
podman 4 to the second) and a space, which is cut off before the payload is written.

Why the stamps: an engine may end a ``follow`` stream before the container's last lines
reached it (podman's ``logs --follow`` lost the last line now and then). When a follow
stream ends, :func:`catch_up` reads the log once more, without ``follow``, since the
second of the last stamp written, and writes only what comes after it: every frame stamped
later, and those stamped the same as the last one beyond as many as were written. A
line is neither lost nor written twice.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from typing import Any

import anyio

from ._engine_api import EngineApi

__all__ = ["LogPosition", "Sink", "copy_log", "fd_sink", "parse_stamp", "write_frames"]

_STAMP = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(Z|[+-]\d\d:?\d\d)")


def parse_stamp(text: bytes) -> tuple[int, int] | None:
    """(Unix seconds, nanoseconds) of an RFC 3339 stamp; None if it is not one."""
    match = _STAMP.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    zone = match.group(8).decode()
    offset = datetime.timedelta()
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC) - offset
    except ValueError:
        return None
    nanos = int((match.group(7) or b"0").decode().ljust(9, "0"))
    return int(moment.timestamp()), nanos


class LogPosition:
    """How far a container's log was copied: the latest stamp written and how many frames
    carried it. A read that goes over copied ground again (a catch-up, a resume) skips
    the frames up to that point (:meth:`reread`).

    It is kept as the extended attribute ``user.hive.log-position`` of the capture file
    (``<container id> <seconds> <nanoseconds> <count>``), updated as frames are written:
    a daemon that adopts the container (or follows it again after the engine was away)
    resumes exactly there, though the engine stamps to the second (podman) and its
    stream may lag (a file's modification time, the fallback where the file system has
    no extended attributes, is when a line was written, not when it was printed)."""

    ATTRIBUTE = "user.hive.log-position"

    def __init__(self, container_id: str, path: str = "") -> None:
        self.container_id = container_id
        self.path = path  # the capture file that keeps it ('' : kept nowhere)
        self.last: tuple[int, int] | None = None
        self.count = 0
        self._skip: tuple[int, int] | None = None
        self._skip_left = 0

    @classmethod
    def load(cls, container_id: str, path: str) -> LogPosition | None:
        """The position kept on ``path`` for this container, if any."""
        try:
            words = os.getxattr(path, cls.ATTRIBUTE).decode().split()
            if len(words) != 4 or words[0] != container_id:
                return None
            position = cls(container_id, path)
            position.last, position.count = (int(words[1]), int(words[2])), int(words[3])
        except (OSError, ValueError):
            return None
        return position

    def save(self) -> None:
        if self.path and self.last is not None:
            value = f"{self.container_id} {self.last[0]} {self.last[1]} {self.count}".encode()
            try:
                os.setxattr(self.path, self.ATTRIBUTE, value)
            except OSError:
                self.path = ""  # no extended attributes here: adoption falls back to the mtime

    def reread(self) -> None:
        """The next frames go over copied ground: skip them up to the position."""
        self._skip, self._skip_left = self.last, self.count

    def since(self, default: float | None) -> dict[str, Any]:
        """The ``since`` parameter of a read from here (the second of the last stamp)."""
        if self.last is not None:
            return {"since": str(self.last[0])}
        return {} if default is None else {"since": f"{default:.9f}"}

    def admit(self, stamp: tuple[int, int] | None) -> bool:
        """Whether a frame with ``stamp`` is written (a re-read skips what was)."""
        if self._skip is not None:
            if stamp is None or stamp < self._skip:
                return False
            if stamp == self._skip and self._skip_left > 0:
                self._skip_left -= 1
                return False
            self._skip = None  # past the copied ground
        if stamp is not None:
            if self.last is None or stamp > self.last:
                self.last, self.count = stamp, 1
            elif stamp == self.last:
                self.count += 1
        return True


Sink = Callable[[int, bytes], None]  # (stream: 1 stdout, 2 stderr; payload)


def write_frames(pending: bytearray, sink: Sink, position: LogPosition) -> None:
    """Give ``sink`` the complete frames at the start of ``pending``, their stamps cut
    off (those ``position`` admits), and remove them from it."""
    while len(pending) >= 8:
        size = int.from_bytes(pending[4:8], "big")
        if len(pending) < 8 + size:
            return
        stream = pending[0]
        payload = bytes(pending[8:8 + size])
        del pending[:8 + size]
        head, space, rest = payload.partition(b" ")
        stamp = parse_stamp(head) if space else None
        if stamp is not None:
            payload = rest
        if position.admit(stamp):
            sink(stream, payload)


def fd_sink(out: int | None, err: int | None) -> Sink:
    """A sink writing stdout frames to ``out``, stderr ones to ``err`` (None: dropped)."""

    def write(stream: int, payload: bytes) -> None:
        fd = err if stream == 2 else out
        while fd is not None and payload:
            payload = payload[os.write(fd, payload):]

    return write


async def copy_log(api: EngineApi, container_id: str, since: float | None, sink: Sink,
                   position: LogPosition | None = None, follow: anyio.CancelScope | None = None) -> None:
    """Follow the container's log into ``sink`` until it ends, then catch up (see the
    module docstring): from ``position`` if it has one (skipping what it says was copied),
    else since ``since`` (a Unix time; None: all of it). ``follow`` cancelled ends the
    follow early (the container has ended): the catch-up reads the rest. RunnerError if
    the engine went away or the container is gone."""
    position = position or LogPosition(container_id)
    params: dict[str, Any] = {"stdout": "1", "stderr": "1", "timestamps": "1"}
    position.reread()
    with follow or anyio.CancelScope():
        await _read(api, container_id, {**params, "follow": "1", **position.since(since)}, sink, position)
    position.reread()
    await _read(api, container_id, {**params, **position.since(since)}, sink, position)


async def _read(api: EngineApi, container_id: str, params: dict[str, Any], sink: Sink,
                position: LogPosition) -> None:
    async with api.stream(f"/containers/{container_id}/logs", params) as response:
        pending = bytearray()
        async for chunk in response.aiter_raw():
            pending += chunk
            write_frames(pending, sink, position)
            position.save()
