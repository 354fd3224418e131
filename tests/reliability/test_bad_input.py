"""Bad input, end to end: a real daemon with real services and stored state gets malformed
requests, broken hive.yaml files, hostile service output and hostile names and paths.

Every case shows two things: the input gets a clear error (or is handled safely), and
nothing that was already there is lost. Each test first brings up the same state (a
project with a running and a user-stopped service, a SQLite source with a service),
snapshots it, throws its input, then checks the snapshot again, the daemon still
answering, and (for the fuzzers) that a restarted daemon finds the same state on disk.

The component-level robustness tests stay where they are (raw-frame fuzz in
tests/test_protocol_robustness.py, parser fuzz in tests/config/test_config_fuzz.py,
capture-level long lines in tests/logs/test_capture.py); these go through the daemon.

The fuzzers are bounded for CI by example count: 2,000 structured messages plus 2,000
mutated frames (about 30 s on 2 cores) and 1,000 hive.yaml files (about 12 s). Under
CI=true Hypothesis draws the same examples every run (its "ci" profile); for a longer,
exploring run raise the count (per fuzzer) and leave CI unset, so each run draws anew::

    HIVE_FUZZ_EXAMPLES=20000 SHELL=/bin/sh .venv/bin/pytest tests/reliability/test_bad_input.py -k fuzz -s

(about 12 minutes on 2 cores: 6,000 per fuzzer took 3 min 40 s; it prints what the daemon
answered, by kind).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import msgspec
import psutil
import pytest
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hive.config import ConfigError, load_project
from hive_client import BlockingClient, DaemonError, HiveError, ServiceInfo
from hive_client.protocol import (
    DEFAULT_MAX_FRAME,
    Error,
    FrameReader,
    GetLogs,
    GetServiceStatus,
    Hello,
    ListExposed,
    ListPlugins,
    ListServices,
    ListSources,
    LogLineItem,
    Ping,
    Pong,
    RequestMessage,
    Response,
    Shutdown,
    Status,
    StreamEnded,
    StreamLagged,
    SubscribeEvents,
    decode_envelope,
    decode_response,
    encode_frame,
)
from tests.engines import IMAGE, require_engine
from tests.reliability.report import record
from tests.support import DaemonProcess, run_cli, start_daemon, wait_for, write_project

AREA = "bad input"
# Per fuzzer; the defaults keep each of the two fuzz tests near 30 s on 2 cores.
FUZZ_EXAMPLES = int(os.environ.get("HIVE_FUZZ_EXAMPLES", "0")) or None
PROTOCOL_EXAMPLES = FUZZ_EXAMPLES or 2000
YAML_EXAMPLES = FUZZ_EXAMPLES or 1000
SLEEPER = "exec sleep 1000"
PROJECT_YAML = f"""
    version: "1"
    services:
      web:
        runner: {{type: script, script: {{run: "{SLEEPER}"}}}}
        restart: on-failure
        stop_grace: 2s
      api:
        runner: {{type: script, script: {{run: "{SLEEPER}"}}}}
        environment: {{static: {{ROLE: api}}}}
"""
WORKER = {"runner": {"type": "script", "script": {"run": SLEEPER}}, "environment": {"static": {"ROLE": "worker"}}}
# What a request may never target, so the fuzzer's valid requests cannot legitimately
# change what the test checks was kept (a real `stop_source proj` would stop it).
PROTECTED = ("proj", "apps", "web", "api", "worker")
# A marker in every weird name and path: whatever it creates can be searched for.
MARKER = "zzhivebad"


# --- the stack every test starts from --------------------------------------------------------


@dataclass
class Stack:
    """A daemon with a project ``proj`` (web running, api stopped by the user) and a
    SQLite source ``apps`` (worker running)."""

    home: Path
    daemon: DaemonProcess
    project: Path
    database: Path

    def client(self, timeout: float = 60) -> BlockingClient:
        return BlockingClient(self.daemon.socket, timeout=timeout)


def _start(home: Path) -> DaemonProcess:
    # The daemon's CWD is HIVE_HOME: a relative path in a request lands there, not in the repo.
    return start_daemon(home, preexec=partial(os.chdir, home), timeout=60)


def start_stack(home: Path) -> Stack:
    daemon = _start(home)
    project = write_project(home / "proj", PROJECT_YAML)
    database = home / "apps.db"
    with BlockingClient(daemon.socket, timeout=60) as client:
        client.add_source(project, name="proj", start=True)
        client.add_source(database, name="apps")
        client.create_service("apps", "worker", WORKER)
        client.stop_service("proj:api")  # a desired state the user chose: it must stay stopped
    stack = Stack(home, daemon, project, database)
    wait_for(lambda: _settled(stack), timeout=60, what="web and worker running, api stopped")
    return stack


def _settled(stack: Stack) -> bool:
    with stack.client() as client:
        states = {s.fqn: s.state for s in client.list_services()}
    return states == {"proj:web": "running", "proj:api": "stopped", "apps:worker": "running"}


def snapshot(client: BlockingClient) -> dict[str, Any]:
    """What the daemon holds, as a user sees it: sources, services, pids, desired states."""
    return {
        "sources": sorted(
            (s.name, s.path, s.source_type, s.enabled, s.service_count) for s in client.list_sources()
        ),
        "services": sorted(_service_row(s) for s in client.list_services()),
    }


def _service_row(info: ServiceInfo) -> tuple[Any, ...]:
    return (info.fqn, info.state, info.pid, info.desired)


def stored_rows(database: Path) -> list[tuple[Any, ...]]:
    """The SQLite source's rows, read as any other program would."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("SELECT name, enabled, config FROM services ORDER BY name").fetchall()


def assert_intact(stack: Stack, before: dict[str, Any], rows: list[tuple[Any, ...]]) -> None:
    """Nothing lost: the daemon serves, the same services run with the same pids."""
    assert stack.daemon.alive(), stack.daemon.stderr()[-3000:]
    with stack.client() as client:
        client.ping()
        assert snapshot(client) == before
    for fqn, state, pid, _desired in before["services"]:
        if state == "running":
            assert psutil.pid_exists(pid), f"{fqn} (pid {pid}) is gone"
    assert stored_rows(stack.database) == rows


def restart_and_compare(stack: Stack, before: dict[str, Any]) -> None:
    """A new daemon on the same HIVE_HOME finds every source, service and desired state."""
    assert stack.daemon.stop() == 0, stack.daemon.stderr()[-3000:]
    stack.daemon = _start(stack.home)
    wait_for(lambda: _settled(stack), timeout=60, what="the state to come back after a restart")
    with stack.client() as client:
        after = snapshot(client)
    assert after["sources"] == before["sources"]
    assert [(f, s, d) for f, s, _p, d in after["services"]] == [
        (f, s, d) for f, s, _p, d in before["services"]
    ]


@pytest.fixture
def stack(hive_env: Path) -> Iterator[Stack]:
    started = start_stack(hive_env)
    try:
        yield started
    finally:
        started.daemon.stop()


def _rss(pid: int, key: str = "VmRSS") -> int:
    """Bytes of the ``key`` line of /proc/PID/status (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for pid {pid}")


def _one_line_errors(text: str, file: str = "hive.yaml") -> list[str]:
    """The config error lines of ``text``; each must say file[:line]: and what."""
    lines = [line for line in text.strip().splitlines() if line]
    assert lines, "no error message"
    assert "Traceback" not in text
    pattern = re.compile(rf"^(hive: error: )?{re.escape(file)}(:\d+)?: \S")
    for line in lines:
        assert pattern.match(line), f"not a file:line error: {line!r}"
    return lines


# --- 1. the protocol, fuzzed with structure -----------------------------------------------------

REQUEST_TYPES = [t for t in get_args(RequestMessage) if t is not Shutdown]
TAGS = [t.__struct_config__.tag for t in REQUEST_TYPES]
TRICKY = [
    "", "\0", "a\0b", "..", "../..", "../../etc/passwd", "/", "/etc/passwd", "*", "*:*", ":", "::",
    "#", "a:b", "a:b#", "a:b#-1", "a:b#\u00b2", "a:b#99999999", "nope:svc", "Web", "a b", "x" * 129,
    "\u00e9\u4e2d", "\ud7ff\ue000", "${env.HOME}", "{{runtime.port.http}}", "%s%n%x", "\n\r\t",
    "\x1b[31m", "' OR 1=1 --", "null", f"{MARKER}/../../x", f"../../{MARKER}",
]  # fmt: skip
SMALL_TEXT = st.one_of(st.sampled_from(TRICKY), st.text(max_size=24))
# Huge strings: up to 3 MiB each, so a frame of several of them may pass the 8 MiB limit.
HUGE_TEXT = st.builds(
    lambda n, c: c * n, st.sampled_from([1 << 12, 1 << 16, 1 << 20, 3 << 20]), st.sampled_from(["x", "\0", "\u00e9"])
)
TEXT = st.one_of(SMALL_TEXT, HUGE_TEXT)
INTS = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
)


@dataclass(frozen=True)
class Deep:
    """A list nested ``depth`` times, written straight onto the wire (msgspec would not
    encode it on our side either)."""

    depth: int


SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(allow_nan=True, allow_infinity=True), SMALL_TEXT,
    st.binary(max_size=32),
)
GARBAGE = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(SMALL_TEXT, st.integers(-5, 5)), kids, max_size=4),
    ),
    max_leaves=12,
)
DEEP = st.integers(50, 4000).map(Deep)


def typed(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of the field's own type, pushed to their extremes."""
    origin = get_origin(annotation)
    if annotation is str:
        return TEXT
    if annotation is int:
        return INTS
    if annotation is bool:
        return st.booleans()
    if annotation is datetime:
        return st.datetimes(timezones=st.just(UTC)) | st.sampled_from(["9999-12-31T23:59:59Z", "0", "yesterday"])
    if annotation is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if origin in (Union, types.UnionType):
        return st.one_of([typed(arg) for arg in get_args(annotation)])
    if origin is list:
        return st.lists(typed(get_args(annotation)[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(SMALL_TEXT, GARBAGE, max_size=4)
    return GARBAGE


@st.composite
def request_messages(draw: st.DrawFn) -> dict[Any, Any]:
    """A request built from a real request type. Half are well-typed, every field at an
    extreme of its own type, so they reach the handlers; the others have a wrong or
    unknown tag, fields of the wrong type, missing or nested garbage. Extra fields too."""
    kind = draw(st.sampled_from([*REQUEST_TYPES, None]))
    well_typed = kind is not None and draw(st.booleans())
    message: dict[Any, Any] = {}
    if kind is None:
        message["type"] = draw(SMALL_TEXT.filter(lambda t: t not in TAGS) | GARBAGE)
        fields: list[Any] = []
    else:
        tag = kind.__struct_config__.tag
        variants = [tag] if well_typed else [tag, tag, tag.upper(), tag + "\0", None]
        message["type"] = draw(st.sampled_from(variants))
        fields = list(msgspec.structs.fields(kind))
    for info in fields:
        presence = draw(st.integers(0, 5))
        if presence == 0 and not (well_typed and info.required):
            continue  # missing (a required one must be named in the error)
        if presence <= 3 or well_typed:
            message[info.name] = draw(typed(info.type))
        elif presence == 4:
            message[info.name] = draw(GARBAGE)
        else:
            message[info.name] = draw(DEEP)
    message.update(draw(st.dictionaries(SMALL_TEXT, GARBAGE, max_size=2)))  # unknown fields, ignored
    return message


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def could_register(home: Path, text: str) -> bool:
    """Would ``add_source(text)`` register something real (a project, a database)?"""
    if "\0" in text or len(text) > 4000:
        return False
    path = Path(os.path.abspath(os.path.join(home, os.path.expanduser(text))))
    try:
        if path.suffix == ".db" or (path.is_file() and path.suffix in (".yaml", ".yml")):
            return True
        return path.is_dir() and any(
            (path / name).is_file() for name in ("hive.db", "hive.yaml", ".hive/hive.yaml", ".adi/hive.yaml")
        )
    except OSError:
        return False


def harmless(home: Path, message: dict[Any, Any]) -> bool:
    """False for a message that could legitimately change the stored state."""
    for text in _strings(message):
        if any(name in text for name in PROTECTED) or text.endswith(".db"):
            return False
    for key in ("path", "source_id"):
        value = message.get(key)
        if isinstance(value, str) and could_register(home, value):
            return False
    return True


def _wire(value: Any, transport: str) -> Any:
    """``value`` with each Deep turned into raw bytes of the transport."""
    if isinstance(value, Deep):
        if transport == "json":
            return msgspec.Raw(b"[" * value.depth + b"null" + b"]" * value.depth)
        return msgspec.Raw(b"\x91" * value.depth + b"\xc0")
    if isinstance(value, dict):
        return {_wire(k, transport): _wire(v, transport) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(item, transport) for item in value]
    if isinstance(value, bytes) and transport == "json":
        return value.decode("latin-1")
    return value


STREAM_ITEMS = (LogLineItem, StreamEnded, StreamLagged)


class Wire:
    """One raw connection to the daemon: frames or JSON lines, by hand."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = FrameReader(64 * 1024 * 1024)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        # The daemon may close first (a frame over the limit): what it said still counts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data)

    def frame(self) -> tuple[int, Response] | None:
        """The next frame, decoded (it must decode); None at a clean end of stream."""
        while True:
            payload = self.reader.next_payload()
            if payload is not None:
                msg_id, raw = decode_envelope(payload)
                return msg_id, decode_response(raw)
            data = self._recv()
            if not data:
                assert self.reader.buffered == 0, "the daemon closed in the middle of a frame"
                return None
            self.reader.feed(data)

    def line(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            data = self._recv()
            if not data:
                assert not self.buffer, "the daemon closed in the middle of a line"
                return None
            self.buffer += data
        text, _, self.buffer = self.buffer.partition(b"\n")
        answer = json.loads(text)
        assert isinstance(answer, dict) and "type" in answer, answer
        return answer

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 20)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()


def check_error(code: str, message: str) -> None:
    """An error frame: a stable code, a message with no traceback, never INTERNAL."""
    assert code != "INTERNAL", f"the daemon failed on this input: {message}"
    assert re.fullmatch(r"[A-Z_]+", code), code
    assert "Traceback" not in message


# What the daemon answered, by response type or error code (printed after the fuzz).
ANSWERS: dict[str, int] = {}


def check_answer(answer: Response) -> None:
    kind = answer.code if isinstance(answer, Error) else answer.__struct_config__.tag
    ANSWERS[kind] = ANSWERS.get(kind, 0) + 1
    if isinstance(answer, Error):
        check_error(answer.code, answer.message)


PING_ID = 4_000_000_001


def exchange_binary(path: Path, frame: bytes) -> str:
    """Send one frame then a ping; the frame is answered (or refused, closing) and the
    connection still serves the ping. Returns what happened."""
    wire = Wire(path)
    try:
        wire.send(frame + encode_frame(PING_ID, Ping()))
        answers: list[tuple[int, Response]] = []
        while True:
            got = wire.frame()
            if got is None:
                break
            answers.append(got)
            check_answer(got[1])
            if (PING_ID, Pong()) in answers and len(answers) >= 2:
                return "answered"
        # Closed: only a frame over the limit may end the connection, after saying so.
        assert len(frame) - 4 > DEFAULT_MAX_FRAME, f"closed without cause after {answers}"
        assert answers and isinstance(answers[0][1], Error) and answers[0][1].code == "FRAME_TOO_LARGE", answers
        return "too large"
    finally:
        wire.close()


def exchange_json(path: Path, line: bytes) -> str:
    """The same over JSON lines: the line is answered (or refused, closing), then the ping,
    in that order (a stream's items may come between, its ``stream_started`` may not)."""
    wire = Wire(path)
    try:
        wire.send(line + b'{"type":"ping"}\n')
        answers: list[dict[str, Any]] = []
        while True:
            answer = wire.line()
            if answer is None:
                break
            answers.append(answer)
            kind = answer.get("code") or answer["type"]
            ANSWERS[kind] = ANSWERS.get(kind, 0) + 1
            if answer["type"] == "error":
                check_error(answer["code"], answer["message"])
            if {"type": "pong"} in answers and len(answers) >= 2:
                if answers[0] == {"type": "pong"}:  # only right if the line was a ping too
                    assert answers.count({"type": "pong"}) == 2, f"answered out of order: {answers}"
                return "answered"
        assert len(line) > DEFAULT_MAX_FRAME, f"closed without cause after {answers}"
        assert answers and answers[0].get("code") == "FRAME_TOO_LARGE", answers
        return "too large"
    finally:
        wire.close()


def test_protocol_fuzz_structured_and_mutated(stack: Stack) -> None:
    """Structured messages from the real request types, then mutated valid frames, all
    against one daemon that keeps running its services; then a restart finds it all."""
    socket_path = stack.daemon.socket
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    rss_before = _rss(stack.daemon.pid)
    outcomes: dict[str, int] = {}
    started = time.monotonic()

    def tally(outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    @settings(
        max_examples=PROTOCOL_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(
        message=request_messages(),
        msg_id=st.one_of(st.integers(0, 2**64 - 1), INTS, INTS, GARBAGE),
        envelope=st.sampled_from(["pair"] * 5 + ["bare", "triple", "map"]),
        transport=st.sampled_from(["msgpack", "msgpack", "msgpack", "json"]),
    )
    def structured(message: dict[Any, Any], msg_id: Any, envelope: str, transport: str) -> None:
        assume(harmless(stack.home, message))
        assert stack.daemon.alive(), stack.daemon.stderr()[-3000:]
        body = _wire(message, transport)
        if transport == "json":
            tally("json " + exchange_json(socket_path, msgspec.json.encode(body) + b"\n"))
            return
        shaped = {"pair": [msg_id, body], "bare": body, "triple": [msg_id, body, msg_id],
                  "map": {"id": msg_id, "message": body}}[envelope]
        payload = msgspec.msgpack.encode(_wire(shaped, transport))
        tally("frame " + exchange_binary(socket_path, struct.pack(">I", len(payload)) + payload))

    structured()
    structured_count = sum(outcomes.values())

    bases = [
        encode_frame(7, request)
        for request in (
            Ping(), Status(), ListSources(), ListServices(), ListPlugins(), ListExposed(),
            GetLogs(fqn="proj:web", lines=3), GetServiceStatus(fqn="proj:web"),
            SubscribeEvents(kinds=["service_started"]), Hello(protocol=1, client="fuzz"),
        )
    ]  # fmt: skip

    @settings(
        max_examples=PROTOCOL_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        base=st.sampled_from(bases),
        mutation=st.sampled_from(["flip", "splice", "zero", "truncate", "short", "long", "huge", "junk"]),
        data=st.data(),
    )
    def mutated(base: bytes, mutation: str, data: st.DataObject) -> None:
        assert stack.daemon.alive(), stack.daemon.stderr()[-3000:]
        payload = bytearray(base[4:])
        size = len(payload)
        if mutation in ("flip", "splice", "zero"):
            # Framing intact: the (damaged) message is answered, the connection serves on.
            if mutation == "flip":
                for position in data.draw(st.lists(st.integers(0, size * 8 - 1), min_size=1, max_size=8)):
                    payload[position // 8] ^= 1 << (position % 8)
            elif mutation == "splice":
                start = data.draw(st.integers(0, size))
                end = data.draw(st.integers(start, size))
                payload[start:end] = data.draw(st.binary(max_size=16))
            else:
                payload = bytearray()
            tally("intact " + exchange_binary(socket_path, struct.pack(">I", len(payload)) + bytes(payload)))
            return
        # Framing broken: whatever comes back is whole frames, then a clean close.
        if mutation == "truncate":
            wire_bytes = base[:4] + bytes(payload[: data.draw(st.integers(0, size - 1))])
        elif mutation == "short":
            wire_bytes = struct.pack(">I", data.draw(st.integers(0, size - 1))) + bytes(payload)
        elif mutation == "long":
            wire_bytes = struct.pack(">I", size + data.draw(st.integers(1, 1 << 20))) + bytes(payload)
        elif mutation == "huge":
            wire_bytes = struct.pack(">I", data.draw(st.integers(DEFAULT_MAX_FRAME + 1, 2**32 - 1))) + bytes(payload)
        else:
            wire_bytes = base + data.draw(st.binary(min_size=1, max_size=64)) + base
        wire = Wire(socket_path, timeout=15)
        try:
            wire.send(wire_bytes)
            wire.sock.shutdown(socket.SHUT_WR)
            while (got := wire.frame()) is not None:  # ends at the daemon's close, or times out
                check_answer(got[1])
        finally:
            wire.close()
        tally(f"broken {mutation} closed cleanly")

    mutated()
    mutated_count = sum(outcomes.values()) - structured_count
    elapsed = time.monotonic() - started

    # A normal client still works, nothing changed, the daemon's memory is what it was.
    assert_intact(stack, before, rows)
    growth = _rss(stack.daemon.pid) - rss_before
    assert growth < 96 * 2**20, f"daemon RSS grew {growth >> 20} MiB over the fuzz"
    restart_and_compare(stack, before)
    print(f"protocol fuzz: {structured_count} structured, {mutated_count} mutated in {elapsed:.0f} s; {outcomes}")
    print(f"answers: {dict(sorted(ANSWERS.items(), key=lambda item: -item[1]))}")
    record(AREA, "protocol fuzz (structured: every request type, extreme values)",
           f"{structured_count:,} messages",
           "each answered or refused with an error; daemon serving")
    record(AREA, "protocol fuzz (mutated frames: bit flips, truncation, lying lengths)",
           f"{mutated_count:,} frames",
           f"answered, or whole frames then a clean close; RSS +{max(growth, 0) >> 20} MiB; state kept over a restart")


# --- 2. hive.yaml, fuzzed through the daemon ---------------------------------------------------

VALID_PROJECT = yaml.safe_load(PROJECT_YAML.replace("\n    ", "\n"))
KEY_NAMES = ["..", "a\0b", "Web", "x" * 300, "", "web", "runner", "script", "run", "version", f"../{MARKER}"]
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1", "script", "docker", "always", "sometimes", "-1", "10s", "${env.NOPE}", "{{runtime.port.x}}",
                     "\0", "x" * 5000, "../../..", "SIGFOO"]),
    st.text(max_size=12),
)  # fmt: skip
YAML_DATA = st.recursive(
    YAML_SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(KEY_NAMES) | st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    return found


PROJECT_PATHS = _paths(VALID_PROJECT)


@st.composite
def broken_yaml(draw: st.DrawFn) -> bytes:
    """The running project's hive.yaml, damaged: in its tree, in its text, or replaced."""
    how = draw(st.sampled_from(["tree", "tree", "text", "text", "garbage"]))
    if how == "tree":
        document = json.loads(json.dumps(VALID_PROJECT))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(PROJECT_PATHS))
            target = document
            try:
                for key in path[:-1]:
                    target = target[key]
            except (KeyError, TypeError):
                continue
            if not path or not isinstance(target, dict):
                document = draw(YAML_DATA)
                continue
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "replace":
                target[path[-1]] = draw(YAML_DATA)
            elif action == "delete":
                target.pop(path[-1], None)
            else:
                target[draw(st.sampled_from(KEY_NAMES))] = draw(YAML_DATA)
        return yaml.safe_dump(document, allow_unicode=True).encode()
    text = bytearray(PROJECT_YAML.replace("\n    ", "\n").encode())
    if how == "garbage":
        return draw(st.binary(max_size=400))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "nul", "utf8", "tab", "dup"]))
        if op == "flip" and position < len(text):
            text[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            text[position:position] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b": ", b"\n- ", b"{", b"&a *a", b"!!python/object:os.system"]))
        elif op == "delete":
            del text[position : position + draw(st.integers(1, 20))]
        elif op == "truncate":
            del text[position:]
        elif op == "nul":
            text[position:position] = b"\0"
        elif op == "utf8":
            text[position:position] = b"\xff\xc0\x80"
        elif op == "tab":
            text[position:position] = b"\t"
        else:
            end = text.find(b"\n", position)
            line_start = text.rfind(b"\n", 0, position) + 1
            text[line_start:line_start] = text[line_start : end + 1 if end >= 0 else len(text)]
    return bytes(text)


def expected_error(project: Path) -> str | None:
    """What the config layer says about the file as it is now (None: it is valid)."""
    try:
        load_project(project, source_name="proj")
    except ConfigError as error:
        return str(error)
    return None


CLI_CASES: list[tuple[str, bytes, str]] = [
    # (what, file, a fragment the one-line error must hold)
    ("unknown restart policy", PROJECT_YAML.replace("\n    ", "\n").replace("on-failure", "sometimes").encode(),
     "services.web.restart: invalid restart policy 'sometimes'"),
    ("broken YAML", b'version: "1"\nservices:\n  web: [\n', "hive.yaml:4: invalid YAML"),
    ("unquoted version", b"version: 1\nservices: {}\n", 'hive.yaml:1: version: expected the string "1"'),
    ("NUL escape in a command", b'version: "1"\nservices:\n  web:\n    runner: {type: script, script: {run: "x\\0"}}\n',
     "hive.yaml:4: services.web.runner.script.run: contains a NUL character"),
    ("invalid UTF-8", b'version: "1"\nservices:\n  web: \xff\n', "hive.yaml:3: Failed to read config file: not valid UTF-8"),
    ("service name of 300 characters", f'version: "1"\nservices:\n  {"a" * 300}:\n    runner: {{type: script, script: {{run: x}}}}\n'.encode(),
     "Service name is longer than 128 characters"),
    ("a YAML alias bomb", ('version: "1"\na0: &a0 [' + ",".join(['"lol"'] * 9) + "]\n" + "".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 10)) + "services: {}\n").encode(),
     "document too large"),
    ("a key with a carriage return and an escape sequence",
     b'version: "1"\nservices:\n  "web\\r\\e[2J":\n    runner: {type: script, script: {run: x}}\n',
     "services.web\\r\\x1b[2J: Service name must contain only"),
    ("working_dir too long", f'version: "1"\nservices:\n  web:\n    runner: {{type: script, script: {{run: x, working_dir: {"d/" * 2100}}}}}\n'.encode(),
     "hive.yaml:4: services.web.runner.script.working_dir: path is too long"),
]  # fmt: skip


def test_hive_yaml_fuzz_through_the_daemon(stack: Stack) -> None:
    """A running project's hive.yaml is broken in many ways, and `hive up`, `hive source
    reload` and `hive reload` are tried on each: every one is refused with the config
    layer's precise error, and the running services and stored state stay as they were."""
    valid = (stack.project / "hive.yaml").read_bytes()
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    counts = {"cli": 0, "client": 0}

    # Through the CLI, as a user meets it.
    for what, text, fragment in CLI_CASES:
        (stack.project / "hive.yaml").write_bytes(text)
        up = run_cli("up", str(stack.project))
        assert up.returncode == 1, (what, up.stdout, up.stderr)
        # One problem, one line: where (file:line), what key, what is wrong, and the code.
        (line,) = _one_line_errors(up.stderr)
        # Nothing from the file reaches the terminal raw (a \r, an escape sequence).
        assert all(char.isprintable() for char in line), repr(line)
        assert fragment in line, (what, line)
        assert line.endswith("[INVALID_CONFIG]"), line
        counts["cli"] += 1
        assert_intact(stack, before, rows)
    (stack.project / "hive.yaml").write_bytes(CLI_CASES[0][1])
    source_reload = run_cli("source", "reload", "proj")
    assert source_reload.returncode == 1 and len(_one_line_errors(source_reload.stderr)) == 1
    daemon_reload = run_cli("reload")
    # The daemon-wide reload applies the rest, says which source it kept as it was, and
    # fails (exit 1) so that a script notices.
    assert daemon_reload.returncode == 1, daemon_reload.stdout
    (line,) = daemon_reload.stderr.strip().splitlines()
    assert "kept the running configuration of proj: hive.yaml:6: " + CLI_CASES[0][2] in line
    assert line.endswith("[INVALID_CONFIG]"), line
    assert "Traceback" not in daemon_reload.stdout + daemon_reload.stderr
    counts["cli"] += 2
    assert_intact(stack, before, rows)

    # The bulk through the client, each file checked against the config layer's own verdict.
    client = stack.client()
    client.connect()

    @settings(
        max_examples=YAML_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(text=broken_yaml(), via=st.sampled_from(["reload_source", "add_source", "reload"]))
    def attempt(text: bytes, via: str) -> None:
        (stack.project / "hive.yaml").write_bytes(text)
        expected = expected_error(stack.project)
        if expected is None:
            (stack.project / "hive.yaml").write_bytes(valid)
            assume(False)  # still a valid config: nothing to refuse
        assert expected is not None
        if via == "reload":
            with pytest.raises(DaemonError) as partly:
                client.reload()
            assert partly.value.code == "INVALID_CONFIG"
            assert f"kept the running configuration of proj: {expected}" in partly.value.message
        else:
            # add_source on a known path is what `hive up PATH` asks first.
            call = partial(client.add_source, stack.project) if via == "add_source" else partial(
                client.reload_source, "proj")
            with pytest.raises(DaemonError) as refused:
                call()
            assert refused.value.code == "INVALID_CONFIG"
            assert refused.value.message == expected
            _one_line_errors(refused.value.message)
        counts["client"] += 1
        assert snapshot(client) == before

    try:
        attempt()
    finally:
        (stack.project / "hive.yaml").write_bytes(valid)
    plan = client.reload_source("proj")
    client.close()
    # The valid file again: nothing to restart, nothing lost.
    assert (plan.start, plan.stop, plan.restart) == ([], [], [])
    assert_intact(stack, before, rows)
    restart_and_compare(stack, before)
    record(AREA, "hive.yaml fuzz through the daemon (hive up, source reload, reload)",
           f"{counts['client']:,} files + {counts['cli']} CLI runs",
           "each refused with the config layer's file:line error; same pids, same services")


# --- 3. a 50 MB log line without a newline -----------------------------------------------------

LONG_LINE = 50_000_000
CHUNK = 1_000_000
MAX_LINE = 64 * 1024  # the daemon's default logs.max_line_bytes


def test_a_50mb_log_line_from_a_real_service(stack: Stack) -> None:
    """A service writes 50 MB with no newline, then a normal line. The daemon cuts it into
    max_line_bytes pieces as the capture does, its memory stays bounded, `hive logs`
    shows the pieces and the later line, and the other services carry on."""
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    pid = stack.daemon.pid
    baseline = _rss(pid)
    # Reset the kernel's peak-RSS mark, so VmHWM is the peak of this test alone.
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    peak = baseline
    flood = {"runner": {"type": "script", "script": {
        # In 1 MB writes, a tenth of a second apart: a daemon on a busy machine (the suite runs
        # in parallel) may fall 16 MiB behind a single burst and skip bytes, as designed
        # (docs/services.md#output); this test is about the cutting and the memory.
        "run": f"for i in $(seq {LONG_LINE // CHUNK}); do head -c {CHUNK} /dev/zero | tr '\\0' x; sleep 0.1; done; "
               f"echo; echo after-the-long-line; {SLEEPER}"}}}
    started = time.monotonic()
    with stack.client() as client:
        client.create_service("apps", "flood", flood)

        def arrived() -> bool:
            nonlocal peak
            peak = max(peak, _rss(pid))  # sampled as well, in case VmHWM was not reset
            return any(line.message == "after-the-long-line" for line in client.get_logs("apps:flood", lines=2))

        wait_for(arrived, timeout=120, what="the line after the 50 MB one")
        elapsed = time.monotonic() - started
        peak = max(peak, _rss(pid, "VmHWM"))
        tail = client.get_logs("apps:flood", lines=4)
    growth = peak - baseline

    # The pieces: every one full but the last, which ends the line; then the next line.
    assert [line.message for line in tail][-1] == "after-the-long-line"
    pieces = [line.message for line in tail[:-1]]
    assert all(set(piece) == {"x"} for piece in pieces)
    assert [len(piece) for piece in pieces] == [MAX_LINE, MAX_LINE, LONG_LINE % MAX_LINE]
    # Every byte is in the log files, cut the same way (the files rotate at 10 MiB, 5 kept).
    lengths: list[int] = []
    for log in sorted(stack.home.glob("logs/apps/flood.log*"), key=lambda p: (len(p.name), p.name), reverse=True):
        for raw in log.read_bytes().split(b"\n"):
            text = raw.split(b" ", 3)[-1]
            if text and set(text) == {ord("x")}:
                lengths.append(len(text))
    assert sum(lengths) == LONG_LINE and max(lengths) == MAX_LINE
    assert len(lengths) == -(-LONG_LINE // MAX_LINE)  # 763 pieces

    # `hive logs` as a user runs it: the pieces, whole, then the later line.
    shown = run_cli("logs", "apps:flood", "-n", "3")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    printed = shown.stdout.splitlines()
    assert printed[-1].endswith(" after-the-long-line")
    assert printed[-2].endswith(" " + "x" * (LONG_LINE % MAX_LINE)) and printed[-3].endswith(" " + "x" * MAX_LINE)

    assert growth < 48 * 2**20, f"daemon RSS grew {growth >> 20} MiB for one 50 MB line"
    with stack.client() as client:
        after = snapshot(client)
        assert client.get_service_status("apps:flood").state == "running"
    # The flood service joined; everything else is as it was.
    assert [row for row in after["services"] if row[0] != "apps:flood"] == before["services"]
    assert [row for row in stored_rows(stack.database) if row[0] != "flood"] == rows
    print(f"50 MB line: daemon RSS {baseline >> 20} MiB -> peak {peak >> 20} MiB (+{growth >> 20} MiB), "
          f"{len(lengths)} pieces in {elapsed:.1f} s")
    record(AREA, "one 50 MB log line without a newline (real service)",
           f"{LONG_LINE:,} bytes",
           f"cut into {len(lengths)} pieces of 64 KiB, later line shown; daemon RSS +{growth >> 20} MiB peak")


# --- 4. invalid UTF-8 in a service's output ----------------------------------------------------

BAD_BYTES = [b"ok \xff\xfe end", b"overlong \xc0\x80 nul-ish", b"cut \xe2\x82", b"lone \x80 continuation"]


def test_invalid_utf8_output_shows_replacement_characters(stack: Stack) -> None:
    """Invalid UTF-8 on stdout and stderr: `hive logs` (plain and --json) and the client
    show it with U+FFFD, nothing crashes, and a later line arrives whole."""
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    octal = ["".join(f"\\{byte:03o}" for byte in line) for line in BAD_BYTES]
    script = "; ".join(
        f"printf '{text}\\n'" + (" >&2" if index % 2 else "") for index, text in enumerate(octal)
    ) + f"; echo later-line-fine; {SLEEPER}"
    expected = [raw.decode("utf-8", "replace") for raw in BAD_BYTES]
    assert all("\ufffd" in text for text in expected)
    with stack.client() as client:
        client.create_service("apps", "bytes", {"runner": {"type": "script", "script": {"run": script}}})
        wait_for(lambda: any(line.message == "later-line-fine" for line in client.get_logs("apps:bytes")),
                 timeout=60, what="the later line")
        shown_lines = client.get_logs("apps:bytes")
    # Each stream keeps its order (the two are captured apart, so they may interleave).
    stdout = [line.message for line in shown_lines if line.stream == "stdout"]
    stderr = [line.message for line in shown_lines if line.stream == "stderr"]
    assert stdout == [*expected[0::2], "later-line-fine"]
    assert stderr == expected[1::2]

    plain = run_cli("logs", "apps:bytes")
    assert plain.returncode == 0 and "Traceback" not in plain.stderr, plain.stderr
    for text in expected:
        assert text in plain.stdout
    assert "later-line-fine" in plain.stdout
    as_json = run_cli("logs", "apps:bytes", "--json")
    assert as_json.returncode == 0, as_json.stderr
    shown = [json.loads(line)["message"] for line in as_json.stdout.splitlines()]
    assert sorted(m for m in shown if m in expected or m == "later-line-fine") == sorted([*expected, "later-line-fine"])
    # In the C locale too (Python switches to UTF-8 mode there, so nothing to encode badly).
    c_locale = run_cli("logs", "apps:bytes", env={"LC_ALL": "C", "LANG": "C"})
    assert c_locale.returncode == 0 and "Traceback" not in c_locale.stderr, c_locale.stderr

    with stack.client() as client:
        after = snapshot(client)
    assert [row for row in after["services"] if row[0] != "apps:bytes"] == before["services"]
    assert [row for row in stored_rows(stack.database) if row[0] != "bytes"] == rows
    record(AREA, "invalid UTF-8 on stdout and stderr (real service)",
           f"{len(BAD_BYTES)} kinds of bad bytes",
           "U+FFFD in hive logs (plain, --json, C locale) and the client; later line fine")


# --- 5. names and paths: `..`, NUL, very long -------------------------------------------------

WEIRD_NAMES = ["..", f"../{MARKER}", f"{MARKER}/x", f"a\0{MARKER}", MARKER * 20, "x" * 100_000, "", "Web", f"{MARKER} x"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _strays() -> list[str]:
    """Entries named with the marker in the places a path traversal would reach."""
    places = {Path("/"), Path("/tmp"), Path.cwd(), Path.cwd().parent}
    return sorted(str(p) for place in places if place.is_dir() for p in place.iterdir() if MARKER in p.name)


def _refused(call: Callable[[], object], code: str, *fragments: str) -> str:
    """``call`` must fail with ``code`` and a one-line message holding ``fragments``."""
    with pytest.raises(DaemonError) as refused:
        call()
    message = refused.value.message
    assert refused.value.code == code, (refused.value.code, message)
    assert "\n" not in message and "Traceback" not in message and "\0" not in message, message
    assert len(message) < 1000, f"{len(message)} characters: {message[:200]}..."
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_names_and_paths_with_dots_nul_and_length(stack: Stack) -> None:
    """Service, source, instance names and project paths with `..`, NUL and 100 000
    characters, through the API and through hive.yaml: each is refused with an error that
    names the field, nothing is created outside HIVE_HOME (nor inside it: no capture or
    log file for a refused name), and what was stored is intact."""
    home = stack.home
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    strays_before = _strays()
    files_before = {part: _files(home / part) for part in ("run", "logs")}
    tried = 0

    with stack.client() as client:
        script = {"runner": {"type": "script", "script": {"run": SLEEPER}}}
        for name in WEIRD_NAMES:  # service names in a SQLite source
            code = "INVALID_REQUEST"
            _refused(lambda n=name: client.create_service("apps", n, script), code, "service name")
            tried += 1
        for source in ("..", "../apps", "apps\0", "", "x" * 100_000):  # the source it goes to
            _refused(lambda s=source: client.create_service(s, "fine", script), "NOT_FOUND", "no source")
            tried += 1
        for key, value, where in [  # paths inside a service's config
            ("working_dir", f"{MARKER}\0", "runner.script.working_dir: contains a NUL"),
            ("working_dir", "d/" * 3000, "runner.script.working_dir: path is too long"),
            ("working_dir", "x" * 300, "runner.script.working_dir: a name in the path is too long"),
            ("shell", "/bin/sh\0", "runner.script.shell: contains a NUL"),
        ]:
            config = {"runner": {"type": "script", "script": {"run": SLEEPER, key: value}}}
            _refused(lambda c=config: client.create_service("apps", "fine", c), "INVALID_CONFIG", where)
            tried += 1
        dotenv = {**script, "environment": {"dotenv": {"files": [f"../{MARKER}\0.env"]}}}
        _refused(lambda: client.create_service("apps", "fine", dotenv), "INVALID_CONFIG",
                 "services.fine.environment.dotenv.files[0]: contains a NUL")
        _refused(lambda: client.update_service("apps:worker", {"runner": {"script": {"working_dir": "\0"}}}),
                 "INVALID_CONFIG", "services.worker.runner.script.working_dir")
        tried += 2

        for path in (  # project and database paths
            f"{home}/proj\0", f"{home}/{MARKER}\0.db", "/" + "x" * 5000, f"/{MARKER}/" + "y" * 300 + ".db",
            f"{home}/proj/../../{MARKER}", f"/{MARKER}/missing/apps.db", f"{home}/{MARKER}-no-dir/x.db",
        ):
            with pytest.raises(DaemonError) as refused:
                client.add_source(path)
            check_error(refused.value.code, refused.value.message)
            assert refused.value.code in ("INVALID_REQUEST", "NOT_FOUND"), refused.value
            assert "\n" not in refused.value.message and len(refused.value.message) < 400
            tried += 1
        # `..` that stays on the project: the same source, not a second one.
        assert client.add_source(f"{home}/proj/../proj").name == "proj"
        for name in ("..", "a\0", "x" * 200, "", "Proj", f"{MARKER}/x"):  # source names
            extra = write_project(home / f"extra{tried}", 'version: "1"\nservices: {}\n')
            _refused(lambda n=name, p=extra: client.add_source(p, name=n), "INVALID_REQUEST", "source name")
            tried += 1

        for fqn in ("proj:..", "proj:web\0", "../proj:web", "proj:" + "a" * 1000, "proj:web#\u00b2",
                    "proj:web#-1", "proj:web#99999999", f"proj:{MARKER}/../web", ":", ""):
            for call in (partial(client.scale_service, instances=2), client.get_service_status,
                         client.stop_service, client.restart_service, client.delete_service):
                _refused(partial(call, fqn), "INVALID_FQN", "FQN")
                tried += 1
        for count in (-1, 1001, 2**62):  # instance counts
            _refused(lambda n=count: client.scale_service("proj:web", n), "INVALID_REQUEST", "instances")
            tried += 1
        _refused(lambda: client.scale_service("proj:web#7", 1), "NOT_FOUND", "no instance #7")
        for pattern in ("../../etc/passwd", f"{MARKER}\0", "proj:..", "*/../*"):  # log patterns
            assert client.get_logs(pattern) == []
            tried += 1
        _refused(lambda: client.get_logs("*" * 100_000), "INVALID_REQUEST", "fqn pattern is longer")
        tried += 2

    # Through hive.yaml: the running project's file names a weird service or path.
    valid = (stack.project / "hive.yaml").read_bytes()
    yaml_cases = [
        ("..", "sleep 1", "services...: Service name must start with a lowercase letter"),
        ("a" * 200, "sleep 1", "Service name is longer than 128 characters"),
        (f'"{MARKER}\\0"', "sleep 1", "contains a NUL"),
        ("web", f'sleep 1", working_dir: "{"d/" * 2100}', "runner.script.working_dir: path is too long"),
        ("web", 'sleep 1", working_dir: "x\\0', "runner.script.working_dir: contains a NUL"),
    ]
    try:
        with stack.client() as client:
            for name, run, fragment in yaml_cases:
                (stack.project / "hive.yaml").write_text(
                    f'version: "1"\nservices:\n  {name}:\n    runner: {{type: script, script: {{run: "{run}"}}}}\n'
                )
                with pytest.raises(DaemonError) as refused:
                    client.reload_source("proj")
                assert refused.value.code == "INVALID_CONFIG"
                assert fragment in refused.value.message, refused.value.message
                _one_line_errors(refused.value.message)
                tried += 1
    finally:
        (stack.project / "hive.yaml").write_bytes(valid)

    assert _strays() == strays_before
    assert {part: _files(home / part) for part in ("run", "logs")} == files_before
    assert sorted(p.name for p in home.iterdir() if MARKER in p.name) == []
    assert_intact(stack, before, rows)
    restart_and_compare(stack, before)
    record(AREA, "names and paths with .., NUL, 100k characters (API and hive.yaml)",
           f"{tried} inputs",
           "each refused naming the field; no file created inside or outside HIVE_HOME")


# --- 6. symlinks in container volumes ----------------------------------------------------------

TRAPPING = "trap 'exit 0' TERM; cat /data/note.txt; sleep 1000 & wait"


def test_volume_symlinks_leading_out_of_the_project_are_refused(stack: Stack) -> None:
    """Docker volumes: a source that is a symlink out of the project, or that goes through
    a symlinked directory out of it, is refused with one clear line and no container; a
    symlink that stays inside the project is mounted."""
    require_engine("docker")
    home = stack.home
    outside = home / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "note.txt").write_text("secret from outside\n")
    (outside / "sub" / "note.txt").write_text("secret from outside/sub\n")
    project = home / "vols"
    (project / "data").mkdir(parents=True)
    (project / "data" / "note.txt").write_text("note from inside\n")
    (project / "out").symlink_to("../outside")  # relative, out of the project
    (project / "linkdir").symlink_to(outside)  # absolute, a directory on the way
    (project / "inner").symlink_to("data")  # stays inside
    source = f"bi{uuid.uuid4().hex[:8]}"  # container names are global to the engine

    def docker(volume: str) -> dict[str, Any]:
        return {"type": "docker", "docker": {
            "image": IMAGE, "network_mode": "host", "volumes": [volume], "command": ["sh", "-c", TRAPPING]}}

    services = {
        "escape": docker("./out:/data:ro"),
        "escape-dir": docker("./linkdir/sub:/data:ro"),
        "inside": docker("./inner:/data:ro"),
    }
    (project / "hive.yaml").write_text(yaml.safe_dump({"version": "1", "services": {
        name: {"runner": runner, "stop_grace": "5s"} for name, runner in services.items()}}))
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)
    try:
        up = run_cli("up", str(project), "--name", source, timeout=180)
        assert up.returncode == 1 and "Traceback" not in up.stdout + up.stderr, up.stdout + up.stderr

        def status(name: str) -> ServiceInfo:
            with stack.client() as client:
                return client.get_service_status(f"{source}:{name}")

        for name, via in (("escape", "./out"), ("escape-dir", "./linkdir/sub")):
            info = wait_for(lambda n=name: (s := status(n)).state == "crashed" and s, timeout=60,
                            what=f"{name} to be refused")
            error = info.last_error or ""
            assert error.startswith(f"cannot start {source}:{name}: invalid volume '{via}:/data:ro': ")
            assert "resolves through a symlink to" in error and "outside the project" in error
            assert "\n" not in error and str(outside) in error
            assert f"{source}:{name}: {error}" in up.stdout  # under the table `hive up` printed
            listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=hive.fqn={source}:{name}"],
                                    capture_output=True, text=True, timeout=60)
            assert listed.stdout.strip() == "", f"a container was created for {name}"
        wait_for(lambda: status("inside").state == "running", timeout=120, what="the inside volume to run")
        wait_for(lambda: "note from inside" in run_cli("logs", f"{source}:inside").stdout, timeout=60,
                 what="the container to read the file through the inside link")
        logs = run_cli("logs", f"{source}:inside").stdout
        assert "secret" not in logs
        with stack.client() as client:
            after = snapshot(client)
        assert [row for row in after["services"] if not row[0].startswith(source)] == before["services"]
        assert stored_rows(stack.database) == rows
        down = run_cli("down", source, timeout=120)
        assert down.returncode == 0, down.stderr
    finally:
        listed = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=hive.source={source}"],
                                capture_output=True, text=True, timeout=60)
        if listed.stdout.split():
            subprocess.run(["docker", "rm", "-f", "-v", *listed.stdout.split()], capture_output=True, timeout=60)
    record(AREA, "docker volume through a symlink out of the project",
           "2 escaping links, 1 inside",
           "escapes refused (one line, no container); the inside link mounted")


# --- what the fuzzers found, pinned -------------------------------------------------------------


def test_inputs_that_used_to_hurt_the_daemon(stack: Stack) -> None:
    """Each of these once crashed the daemon, blocked it, or let one client grow its memory
    without bound; now each is one error, and the connection and the daemon carry on."""
    with stack.client() as client:
        before = snapshot(client)
    rows = stored_rows(stack.database)

    # 1. Nesting deeper than the decoder's stack (a 100 kB frame): it used to raise
    #    RecursionError out of the connection's task and take the whole daemon down.
    deep_frame = b"\x92\x05" + b"\x91" * 100_000 + b"\xc0"
    wire = Wire(stack.daemon.socket)
    try:
        wire.send(struct.pack(">I", len(deep_frame)) + deep_frame + encode_frame(6, Ping()))
        first, second = wire.frame(), wire.frame()
    finally:
        wire.close()
    assert first is not None and isinstance(first[1], Error), first
    assert (first[1].code, first[1].message) == ("INVALID_REQUEST", "undecodable frame: input nested too deeply")
    assert second == (6, Pong())
    wire = Wire(stack.daemon.socket)
    try:
        wire.send(b'{"type":"ping","x":' + b"[" * 100_000 + b"]" * 100_000 + b'}\n{"type":"ping"}\n')
        assert wire.line() == {"type": "error", "code": "INVALID_REQUEST",
                               "message": "malformed message: input nested too deeply"}
        assert wire.line() == {"type": "pong"}
    finally:
        wire.close()

    with stack.client() as client:
        # 2. A frame-sized notice: the bus keeps 1024 events, 8 MiB each was 8 GiB.
        rss = _rss(stack.daemon.pid)
        for _ in range(20):
            with pytest.raises(DaemonError, match=r"event too large: 7000\d+ bytes .*at most 65536"):
                client.emit_event("notice", "m" * 7_000_000)
        assert _rss(stack.daemon.pid) - rss < 64 * 2**20
        client.emit_event("notice", "m" * 60_000)  # a large but sane one still goes through
        # 3. A megabyte FQN pattern: fnmatch compiled it on the event loop for 20 s.
        started = time.monotonic()
        for call in (
            lambda: client.get_logs("*a" * 500_000),
            lambda: client.stream_logs("*a" * 500_000).open(),
            lambda: client.subscribe_events(fqn="x" * 1_000_000).open(),
        ):
            with pytest.raises(DaemonError, match="fqn pattern is longer than 512 characters") as refused:
                call()
            assert isinstance(refused.value, HiveError) and refused.value.code == "INVALID_REQUEST"
        assert time.monotonic() - started < 10
        # 4. A negative replay point counted phantom missed events (stream_lagged 2**63).
        with pytest.raises(DaemonError, match="since_seq must be 0 or more"):
            client.subscribe_events(since_seq=-(2**63)).open()
        # 5. "²" passes str.isdigit() and then failed int(): now the usual FQN error.
        with pytest.raises(DaemonError, match=r"invalid FQN 'proj:web#\\xb2'|invalid FQN 'proj:web#\u00b2'"):
            client.get_service_status("proj:web#\u00b2")
    assert_intact(stack, before, rows)
    record(AREA, "inputs the fuzzers found (deep nesting, 7 MB events, 1 MB patterns, ...)",
           "6 kinds", "each one error; connection and daemon carry on")
