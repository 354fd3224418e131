"""The daemon's side of a connection: an answer interrupted halfway through its frame
must not let the next one land in the middle of it (the client could never resync)."""

from __future__ import annotations

import itertools
import socket
import types

import anyio
import pytest

from hive.daemon.client_limits import ClientBudget
from hive.daemon.redaction import SecretRedactor
from hive.daemon.server import Connection, Peer, RawStream
from hive_client import ErrorCode
from hive_client.protocol import Error, FrameReader, Ok, decode_envelope, decode_response

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _connection(sock: socket.socket) -> Connection:
    server = types.SimpleNamespace(_connection_ids=itertools.count(1), budget=ClientBudget(1 << 40, 1 << 40),
                                   secrets=SecretRedactor())
    return Connection(server, RawStream(sock), Peer(pid=0, uid=0, gid=0))  # type: ignore[arg-type]


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_cancelled_answer_cut_halfway_ends_the_connection() -> None:
    daemon_end, client_end = socket.socketpair()
    daemon_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    connection = _connection(daemon_end)
    big = Error(code=ErrorCode.INTERNAL, message="x" * 300_000)  # far more than the buffer
    with anyio.CancelScope() as scope:
        scope.cancel()
        await connection.send(1, big)
    assert scope.cancelled_caught
    assert connection.closed
    # What a shielded "stream ended" would send next: refused, not spliced in.
    assert await connection.send(2, Ok(message="after")) is False
    received = _read_all(client_end)  # ends: the daemon shut the connection down
    assert 0 < len(received) < 300_000
    reader = FrameReader(1 << 20)
    reader.feed(received)
    assert reader.next_payload() is None  # a torn frame, and nothing after it
    daemon_end.close()
    client_end.close()


async def test_a_cancelled_answer_that_went_whole_keeps_the_connection() -> None:
    daemon_end, client_end = socket.socketpair()
    connection = _connection(daemon_end)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await connection.send(1, Ok(message="small"))
    assert not connection.closed
    assert await connection.send(2, Ok(message="next"))
    daemon_end.shutdown(socket.SHUT_WR)
    reader = FrameReader(1 << 20)
    reader.feed(_read_all(client_end))
    answers = []
    while (payload := reader.next_payload()) is not None:
        msg_id, raw = decode_envelope(payload)
        answers.append((msg_id, decode_response(raw)))
    assert answers == [(1, Ok(message="small")), (2, Ok(message="next"))]
    daemon_end.close()
    client_end.close()
