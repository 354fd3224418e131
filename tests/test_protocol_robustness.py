"""Bad input never hurts the daemon: each gets its documented error or a clean close,
and other clients keep being served, checked in the same test."""

from __future__ import annotations

import json
import socket
import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive_client import BlockingClient
from hive_client.protocol import (
    Error,
    FrameReader,
    Ping,
    Pong,
    Status,
    decode_envelope,
    decode_response,
    encode_frame,
)
from tests.support import DaemonProcess


class RawConnection:
    """A plain socket speaking frames by hand."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = FrameReader(64 * 1024 * 1024)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, payload: bytes) -> None:
        self.send(struct.pack(">I", len(payload)) + payload)

    def receive(self):
        while True:
            payload = self.reader.next_payload()
            if payload is not None:
                msg_id, raw = decode_envelope(payload)
                return msg_id, decode_response(raw)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.reader.feed(data)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def assert_still_serving(daemon: DaemonProcess) -> None:
    with BlockingClient(daemon.socket, timeout=10) as client:
        client.ping()
        assert client.status().running
    assert daemon.alive()


@pytest.fixture
def raw(daemon: DaemonProcess):
    connection = RawConnection(str(daemon.socket))
    yield connection
    connection.close()


def test_oversize_frame_is_refused_and_closed(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.send(struct.pack(">I", 8 * 1024 * 1024 + 1))
    msg_id, message = raw.receive()
    assert msg_id == 0
    assert isinstance(message, Error)
    assert message.code == "FRAME_TOO_LARGE"
    assert "exceeds the limit" in message.message
    assert raw.closed_by_peer()
    assert_still_serving(daemon)


def test_truncated_frame_then_hangup(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.send(struct.pack(">I", 100) + b"\x92\x01")
    raw.close()
    assert_still_serving(daemon)


def test_undecodable_payload_keeps_connection(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(b"\xc1\xc1\xc1")  # 0xc1 is never valid MessagePack
    msg_id, message = raw.receive()
    assert (msg_id, message.code) == (0, "INVALID_REQUEST")
    raw.send(encode_frame(7, Ping()))
    assert raw.receive() == (7, Pong())


def test_unknown_tag_names_the_type(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(msgspec.msgpack.encode([5, {"type": "launch_rockets"}]))
    msg_id, message = raw.receive()
    assert msg_id == 5
    assert message.code == "INVALID_REQUEST"
    assert "launch_rockets" in message.message
    assert "$.type" in message.message
    raw.send(encode_frame(6, Ping()))
    assert raw.receive() == (6, Pong())


def test_wrong_field_type_names_the_path(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(msgspec.msgpack.encode([9, {"type": "get_service_status", "fqn": 42}]))
    msg_id, message = raw.receive()
    assert msg_id == 9
    assert message.code == "INVALID_REQUEST"
    assert "$.fqn" in message.message
    assert "Expected `str`, got `int`" in message.message


def test_missing_field_names_it(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(msgspec.msgpack.encode([3, {"type": "add_source"}]))
    _, message = raw.receive()
    assert message.code == "INVALID_REQUEST"
    assert "path" in message.message


def test_envelope_without_id(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(msgspec.msgpack.encode({"type": "ping"}))
    msg_id, message = raw.receive()
    assert (msg_id, message.code) == (0, "INVALID_REQUEST")
    assert "undecodable frame" in message.message


def test_half_closed_connection_still_gets_answers(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.send(encode_frame(1, Ping()) + encode_frame(2, Status()))
    raw.sock.shutdown(socket.SHUT_WR)
    answers = {raw.receive()[0], raw.receive()[0]}
    assert answers == {1, 2}
    assert raw.receive() is None  # then a clean close
    assert_still_serving(daemon)


def test_many_requests_pipelined_in_one_write(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.send(b"".join(encode_frame(i, Ping()) for i in range(1, 501)))
    ids = {raw.receive()[0] for _ in range(500)}
    assert ids == set(range(1, 501))


def test_protocol_version_mismatch(daemon: DaemonProcess, raw: RawConnection) -> None:
    raw.frame(msgspec.msgpack.encode([1, {"type": "hello", "protocol": 999}]))
    _, message = raw.receive()
    assert message.code == "PROTOCOL_MISMATCH"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=2048))
def test_random_bytes_never_hurt_the_daemon(daemon: DaemonProcess, garbage: bytes) -> None:
    connection = RawConnection(str(daemon.socket), timeout=5)
    try:
        connection.send(garbage)
        connection.sock.shutdown(socket.SHUT_WR)
        # Whatever comes back must be well-formed answers, then a close.
        while True:
            try:
                data = connection.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
    finally:
        connection.close()
    with BlockingClient(daemon.socket, timeout=10) as client:
        client.ping()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    message=st.dictionaries(
        st.sampled_from(["type", "fqn", "name", "path", "lines", "kinds", "graceful", "x"]),
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(),
                  st.lists(st.integers(0, 2**32), max_size=3), st.sampled_from(["ping", "status", "get_logs", "add_source"])),
    )
)
def test_random_messages_get_an_answer(daemon: DaemonProcess, message: dict) -> None:
    """Well-framed but arbitrary messages: every one gets a response with its id."""
    if message.get("type") == "shutdown":
        return
    connection = RawConnection(str(daemon.socket), timeout=10)
    try:
        connection.frame(msgspec.msgpack.encode([77, message]))
        msg_id, answer = connection.receive()
        assert msg_id == 77
        assert answer is not None
    finally:
        connection.close()


def test_json_lines_ping(daemon: DaemonProcess) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    with sock, sock.makefile("rwb") as stream:
        stream.write(b'{"type":"ping"}\n')
        stream.flush()
        assert json.loads(stream.readline()) == {"type": "pong"}

        stream.write(b'{"type":"status"}\n')
        stream.flush()
        status = json.loads(stream.readline())
        for key in ("running", "pid", "version", "source_count", "running_services",
                    "total_services", "proxy_addresses", "uptime_secs"):
            assert key in status
        assert status["type"] == "status"
        assert status["pid"] == daemon.pid

        stream.write(b'{"type":"nope"}\n{not json}\n{"type":"ping"}\n')
        stream.flush()
        first = json.loads(stream.readline())
        second = json.loads(stream.readline())
        assert first["type"] == second["type"] == "error"
        assert first["code"] == second["code"] == "INVALID_REQUEST"
        assert json.loads(stream.readline()) == {"type": "pong"}


def test_json_lines_stream_is_answered_before_the_next_line(daemon: DaemonProcess) -> None:
    """No ids in JSON lines: a stream's ``stream_started`` (or its refusal) comes before
    the answer to the line after it, even when both arrive in one write."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket))
    with sock, sock.makefile("rwb") as stream:
        for _ in range(20):
            stream.write(b'{"type":"subscribe_events","kinds":["source_added"]}\n{"type":"ping"}\n'
                         b'{"type":"subscribe_events","since_seq":-1}\n{"type":"ping"}\n')
            stream.flush()
            assert json.loads(stream.readline())["type"] == "stream_started"
            assert json.loads(stream.readline()) == {"type": "pong"}
            refused = json.loads(stream.readline())
            assert refused["type"] == "error" and refused["code"] == "INVALID_REQUEST", refused
            assert json.loads(stream.readline()) == {"type": "pong"}


def test_json_lines_overlong_line(daemon: DaemonProcess) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(daemon.socket))
    with sock:
        chunk = b"{" + b"x" * (1024 * 1024)
        try:
            for _ in range(10):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while b"\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
        assert json.loads(data.splitlines()[0])["code"] == "FRAME_TOO_LARGE"
    assert_still_serving(daemon)
