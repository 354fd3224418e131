"""A container's output copied from the engine's logs endpoint, against an engine that
ends a follow stream before the last lines (what podman's ``logs --follow`` did now and
then): the copy reads the log once more and writes what is missing, nothing twice.

The engine here is a real HTTP server on a Unix socket that answers the two requests the
way podman 4 does (frames, stamps to the second); the copy is the daemon's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from runners._engine_logs import parse_stamp
from runners._engine_watch import EngineWatch, Watched

pytestmark = pytest.mark.anyio

# Stamped to the second, as podman 4 does: two lines may carry the same stamp.
LOG = [
    (1, "2026-12-07T14:09:46Z", "l1"),
    (2, "2026-12-07T14:09:47Z", "e1"),
    (1, "2026-12-07T14:09:47Z", "l2"),  # the follow stream ends after this one
    (1, "2026-12-07T14:09:47Z", "l3"),
    (1, "2026-12-07T14:09:48Z", "l4"),
]
FOLLOWED = 3


def frames(entries: list[tuple[int, str, str]]) -> bytes:
    out = bytearray()
    for stream, stamp, line in entries:
        payload = f"{stamp} {line}\n".encode()
        out += bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload
    return bytes(out)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[str, list[dict[str, list[str]]]]]:
    """A Unix socket answering ``GET /containers/c1/logs``; the queries it got."""
    path = str(tmp_path / f"engine-{uuid.uuid4().hex[:6]}.sock")
    queries: list[dict[str, list[str]]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = request.split()[1]
        query = parse_qs(urlsplit(target).query)
        queries.append(query)
        if "/containers/c2/" in target:  # an engine that cannot give this container's log
            message = b'{"message": "configured logging driver does not support reading"}'
            writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(message), message))
            await writer.drain()
            writer.close()
            return
        body = frames(LOG[:FOLLOWED] if query.get("follow") == ["1"] else LOG)
        if "since" in query:  # whole seconds: what the engine keeps from that second on
            since = int(query["since"][0].split(".")[0])
            body = frames([entry for entry in (LOG[:FOLLOWED] if query.get("follow") == ["1"] else LOG)
                           if (parse_stamp(entry[1].encode()) or (0, 0))[0] >= since])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                     b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path)
    async with server:
        yield path, queries


async def test_a_follow_stream_that_ends_early_is_caught_up(
    engine: tuple[str, list[dict[str, list[str]]]], tmp_path: Path
) -> None:
    path, queries = engine
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    watched = Watched()
    EngineWatch.of(path, "Test").follow("c1", watched, str(out), str(err), since=None)
    with anyio.fail_after(10):
        while watched.following:
            await watched.changed()
    assert out.read_text() == "l1\nl2\nl3\nl4\n"  # each once, the stamps cut off
    assert err.read_text() == "e1\n"
    assert [query.get("follow") for query in queries] == [["1"], None]
    assert queries[1]["since"] == [str(parse_stamp(b"2026-12-07T14:09:47Z")[0])]  # type: ignore[index]


def test_stamps() -> None:
    assert parse_stamp(b"1970-01-01T00:00:01.5Z") == (1, 500_000_000)
    assert parse_stamp(b"1970-01-01T01:00:01+01:00") == (1, 0)
    assert parse_stamp(b"2026-12-07T14:09:47.123456789Z") == (1796652587, 123456789)
    assert parse_stamp(b"l1") is None


async def test_an_engine_error_on_the_log_is_reported_not_silent(
    engine: tuple[str, list[dict[str, list[str]]]], tmp_path: Path
) -> None:
    path, _ = engine
    watched = Watched()
    reported: list[str] = []
    watched.report = reported.append
    EngineWatch.of(path, "Test").follow("c2", watched, str(tmp_path / "out.log"), str(tmp_path / "out.log"),
                                         since=None)
    with anyio.fail_after(10):
        while watched.following:
            await watched.changed()
    assert reported == ["cannot copy the container's output: the Test engine answered 501: "
                        "configured logging driver does not support reading"]
    assert (tmp_path / "out.log").read_text() == ""  # nothing of the engine's taken for output
