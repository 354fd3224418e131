"""JSON lines as Hive's own client speaks it (``lib-hive-daemon-client`` of adi-family/cli).

Each request the Rust client can send is written here as serde writes it (every
``Option`` present, ``null`` when unset; a ``Uuid`` hyphenated) and replayed over a real
socket to a real daemon. Each answer and stream item is then read with the Rust types,
re-encoded below as strict msgspec structs: the ``type`` tag must be one the client's
``DaemonResponse`` knows, and the one the client method waits for; every field Hive
declares must be there with Hive's type (``u32``, ``u16``, ``DateTime<Utc>``, ``Uuid``,
``SourceStatus``). Fields of ours beyond Hive's are allowed (serde ignores them) but
only the ones listed here, so an accidental rename shows up.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from tests.support import DaemonProcess, start_daemon, write_project

U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0)]
UUID = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")]
# chrono's DateTime<Utc> wants an offset: a naive timestamp fails to parse.
RFC3339 = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")]


# --- Hive's types (lib-hive-daemon-client/src/lib.rs) ----------------------------------


class ServiceStatus(msgspec.Struct, forbid_unknown_fields=False):
    fqn: str
    source: str
    name: str
    state: str
    ports: dict[str, U16]
    restart_count: U32
    healthy: bool | None = None
    pid: U32 | None = None
    container_id: str | None = None
    started_at: RFC3339 | None = None


class SourceInfo(msgspec.Struct):
    name: str
    path: str
    source_type: str
    enabled: bool
    service_count: int
    status: str | dict[str, str]


class ExposedServiceInfo(msgspec.Struct):
    name: str
    source: str
    service: str
    healthy: bool
    var_names: list[str]
    port_names: list[str]


class LogLine(msgspec.Struct):
    timestamp: RFC3339
    level: str
    service_fqn: str
    message: str
    fields: dict[str, Any] | None = None


class DaemonStatus(msgspec.Struct):
    running: bool
    version: str
    source_count: int
    running_services: int
    total_services: int
    proxy_addresses: list[str]
    uptime_secs: U64
    pid: U32 | None = None


# DaemonResponse: tag -> (the struct its fields decode into, its fields, our extra fields)
RESPONSES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "ok": ({"message": str | None}, {"outcomes"}),
    "source_added": ({"name": str}, {"services", "outcomes", "warnings"}),
    "error": ({"code": str, "message": str}, {"outcomes"}),
    "status": ({}, {"socket", "home", "protocol", "started_at", "clients", "event_seq",
                    "state_error", "state_unsaved", "state_failures", "log_write_errors",
                    "log_lines_dropped", "log_write_error",
                    "log_subscriptions", "client_backlog_bytes", "state_note", "dns_address",
                    "dns_upstream", "dns_error", "dns_answered", "dns_forwarded", "dns_failed",
                    "dns_refused", "dns_dropped", "proxy_errors"}),
    "sources": ({"sources": list[SourceInfo]}, set()),
    "services": ({"services": list[ServiceStatus]}, set()),
    "service": ({"service": ServiceStatus}, set()),
    "exposed": ({"exposed": list[ExposedServiceInfo]}, set()),
    "logs": ({"logs": list[LogLine]}, set()),
    "stream_started": ({"stream_id": UUID}, set()),
    "log_stream": ({"stream_id": UUID, "line": LogLine}, set()),
    "stream_ended": ({"stream_id": UUID}, {"reason"}),
    "service_status_update": ({"stream_id": UUID, "services": list[ServiceStatus]}, set()),
    "pong": ({}, set()),
}
# Our fields beyond Hive's, inside its data types.
EXTRA = {
    "ServiceStatus": {"instance", "runner", "desired", "exit_code", "last_error", "health_checks", "instances",
                      "generation", "color", "uptime_secs"},
    "SourceInfo": {"error"},
    "ExposedServiceInfo": {"has_secret", "consumers"},
    "LogLine": {"stream"},
}
NESTED: dict[str, tuple[str, type[msgspec.Struct]]] = {
    "sources": ("sources", SourceInfo), "services": ("services", ServiceStatus),
    "service": ("service", ServiceStatus), "exposed": ("exposed", ExposedServiceInfo),
    "logs": ("logs", LogLine), "log_stream": ("line", LogLine),
    "service_status_update": ("services", ServiceStatus),
}


def check_hive_shape(message: dict[str, Any]) -> dict[str, Any]:
    """Decode ``message`` as the Rust client would; fail on anything it would reject."""
    tag = message.get("type")
    assert tag in RESPONSES, f"Hive's DaemonResponse has no variant {tag!r}: {message}"
    fields, extra = RESPONSES[tag]
    body = {k: v for k, v in message.items() if k != "type"}
    if tag == "status":
        msgspec.convert(body, DaemonStatus, strict=True)
        extra = extra | set(DaemonStatus.__struct_fields__)
    else:
        for name, kind in fields.items():
            # serde: a missing Option is None; a missing anything else is an error.
            optional = kind == (str | None)
            assert name in body or optional, f"{tag}: Hive's field {name!r} is missing: {message}"
            if name in body:
                msgspec.convert(body[name], kind, strict=True)
    unexpected = set(body) - set(fields) - extra
    assert not unexpected, f"{tag}: fields Hive does not know and we did not mean: {unexpected}"
    if tag in NESTED:
        key, kind = NESTED[tag]
        items = body[key] if isinstance(body[key], list) else [body[key]]
        for item in items:
            stray = set(item) - set(kind.__struct_fields__) - EXTRA[kind.__name__]
            assert not stray, f"{tag}.{key}: unexpected fields {stray}"
    return message


# --- The client's side of the socket -----------------------------------------------------


class RustClient:
    """One connection, written to and read as the Rust client does (a line each way)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")

    def send(self, request: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "the daemon closed the connection"
        return check_hive_shape(json.loads(line))

    def request(self, request: dict[str, Any], expect: str | tuple[str, ...]) -> dict[str, Any]:
        self.send(request)
        answer = self.receive()
        expected = (expect,) if isinstance(expect, str) else expect
        assert answer["type"] in expected, f"{request['type']}: expected {expected}, got {answer}"
        return answer

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


SERVICE = """
version: "1"
services:
  api:
    runner: {type: script, script: {run: "echo api up; exec sleep 3600"}}
    rollout: {type: recreate, recreate: {ports: {http: 18731}}}
    expose: {name: api-public, vars: {API_URL: "http://localhost:{{runtime.port.http}}"}}
  worker:
    runner: {type: script, script: {run: "echo worker up; exec sleep 3600"}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "web", SERVICE)


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[RustClient]:
    c = RustClient(daemon.socket)
    yield c
    c.close()


def test_every_request_of_the_rust_client(daemon: DaemonProcess, client: RustClient,
                                          project: Path, tmp_path: Path) -> None:
    c = client
    c.request({"type": "ping"}, "pong")
    c.request({"type": "status"}, "status")
    added = c.request({"type": "add_source", "path": str(project), "name": "web"}, "source_added")
    assert added["name"] == "web"
    c.request({"type": "list_sources"}, "sources")
    c.request({"type": "start_source", "name": "web"}, "ok")
    services = c.request({"type": "list_services", "source": None}, "services")["services"]
    assert {s["fqn"] for s in services} >= {"web:api", "web:worker"}
    c.request({"type": "list_services", "source": "web"}, "services")
    detail = c.request({"type": "get_service_status", "fqn": "web:api"}, ("service", "services"))
    assert detail["service"]["ports"] == {"http": 18731}
    missing = c.request({"type": "get_service_status", "fqn": "web:nope"}, "error")
    assert missing["code"] == "NOT_FOUND"  # the client reads NOT_FOUND as "no such service"

    exposed = c.request({"type": "list_exposed"}, "exposed")["exposed"]
    assert exposed == [{
        "name": "api-public", "source": "web", "service": "api", "healthy": exposed[0]["healthy"],
        "var_names": ["API_URL"], "port_names": ["http"], "has_secret": False, "consumers": [],
    }]
    assert isinstance(exposed[0]["healthy"], bool)

    c.request({"type": "restart_service", "fqn": "web:worker"}, "ok")
    c.request({"type": "stop_service", "fqn": "web:worker"}, "ok")
    c.request({"type": "start_service", "fqn": "web:worker"}, "ok")
    logs = c.request({"type": "get_logs", "fqn": "web:worker", "lines": 10,
                      "since": "2020-01-01T00:00:00.123456789Z", "level": None}, "logs")["logs"]
    assert any(line["message"] == "worker up" for line in logs)
    c.request({"type": "get_logs", "fqn": None, "lines": None, "since": None, "level": "info"}, "logs")

    reloaded = c.request({"type": "reload_source", "name": "web"}, "ok")
    assert "web" in reloaded["message"]
    c.request({"type": "disable_source", "name": "web"}, "ok")
    c.request({"type": "enable_source", "name": "web"}, "ok")

    db = tmp_path / "dyn.db"
    c.request({"type": "add_source", "path": str(db), "name": None}, "source_added")
    c.request({"type": "create_service", "source_id": "dyn", "name": "job",
               "config": {"runner": {"type": "script", "script": {"run": "exec sleep 3600"}}}}, "ok")
    c.request({"type": "update_service", "fqn": "dyn:job",
               "patch": {"runner": {"type": "script", "script": {"run": "exec sleep 3601"}}}}, "ok")
    c.request({"type": "delete_service", "fqn": "dyn:job"}, "ok")
    c.request({"type": "remove_source", "name": "dyn"}, "ok")

    c.request({"type": "stop_source", "name": "web"}, "ok")
    c.request({"type": "shutdown", "graceful": True}, "ok")
    assert daemon.process.wait(30) == 0


def test_log_stream_as_hive_reads_it(daemon: DaemonProcess, client: RustClient, project: Path) -> None:
    client.request({"type": "add_source", "path": str(project), "name": "web"}, "source_added")
    stream = RustClient(daemon.socket)
    try:
        started = stream.request({"type": "stream_logs", "fqn": "web:*", "level": None}, "stream_started")
        stream_id = started["stream_id"]
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", stream_id)
        client.request({"type": "start_service", "fqn": "web:worker"}, "ok")
        item = stream.receive()
        while item["line"]["service_fqn"] != "web:worker" or item["line"].get("stream") == "hive":
            item = stream.receive()
        assert item["type"] == "log_stream" and item["stream_id"] == stream_id
        assert item["line"]["message"] == "worker up"
        # The client sends the Uuid back hyphenated (serde's form), fire-and-forget.
        stream.send({"type": "stop_log_stream", "stream_id": stream_id})
        ended = stream.receive()
        while ended["type"] == "log_stream":
            ended = stream.receive()
        assert ended == {"type": "stream_ended", "stream_id": stream_id, "reason": "stopped"}
        # One stream_ended only: the next line answers the next request.
        stream.request({"type": "ping"}, "pong")
        gone = stream.request({"type": "stop_log_stream", "stream_id": stream_id}, "error")
        assert gone["code"] == "NOT_FOUND"
    finally:
        stream.close()


def test_stop_accepts_the_uuid_in_its_simple_form(daemon: DaemonProcess, client: RustClient) -> None:
    stream_id = client.request({"type": "stream_logs", "fqn": None, "level": None}, "stream_started")["stream_id"]
    ended = client.request({"type": "stop_log_stream", "stream_id": stream_id.replace("-", "").upper()},
                           "stream_ended")
    assert ended["stream_id"] == stream_id
    client.request({"type": "ping"}, "pong")


def test_service_stream_as_hive_reads_it(daemon: DaemonProcess, client: RustClient, project: Path) -> None:
    client.request({"type": "add_source", "path": str(project), "name": "web"}, "source_added")
    stream = RustClient(daemon.socket)
    try:
        stream_id = stream.request({"type": "subscribe_services", "source": "web"}, "stream_started")["stream_id"]
        first = stream.receive()
        # Hive's update is every watched service, as it is now.
        assert first["type"] == "service_status_update" and first["stream_id"] == stream_id
        assert {s["fqn"]: s["state"] for s in first["services"]} == {"web:api": "stopped", "web:worker": "stopped"}
        client.request({"type": "start_service", "fqn": "web:worker"}, "ok")
        update = stream.receive()
        while {s["fqn"]: s["state"] for s in update["services"]}.get("web:worker") != "running":
            update = stream.receive()
        assert {s["fqn"] for s in update["services"]} == {"web:api", "web:worker"}
        stream.send({"type": "stop_service_stream", "stream_id": stream_id})
        ended = stream.receive()
        while ended["type"] == "service_status_update":
            ended = stream.receive()
        assert ended["type"] == "stream_ended" and ended["stream_id"] == stream_id
        stream.request({"type": "ping"}, "pong")
    finally:
        stream.close()


def test_a_source_that_failed_to_load_in_hive_error_shape(hive_env: Path, project: Path) -> None:
    first = start_daemon(hive_env)
    try:
        c = RustClient(first.socket)
        c.request({"type": "add_source", "path": str(project), "name": "web"}, "source_added")
        c.close()
    finally:
        first.stop()
    (project / "hive.yaml").write_text("version: '1'\nservices: [not, a, map]\n")
    second = start_daemon(hive_env)
    try:
        c = RustClient(second.socket)
        sources = c.request({"type": "list_sources"}, "sources")["sources"]
        (web,) = sources
        assert set(web["status"]) == {"error"}  # serde's shape of SourceStatus::Error(String)
        assert "hive.yaml" in web["status"]["error"]
        c.close()
    finally:
        second.stop()


def test_since_with_nanoseconds_is_a_datetime() -> None:
    """chrono writes nanoseconds; the daemon's decoder must take them (checked live above)."""
    assert msgspec.json.decode(b'"2020-01-01T00:00:00.123456789Z"', type=datetime).microsecond == 123457
