"""Health probes that speak a server's own protocol: postgres, mysql (MariaDB too), redis, grpc.

Each opens one TCP connection to ``host:port``, says the least that makes the server show it
is ready, reads the answer, and hangs up. No client library: each exchange is a few bytes.

* **postgres**, as ``pg_isready``: a startup message (protocol 3.0, ``user`` and ``database``).
  The server's first answer is an authentication request or an error. An authentication
  request, or any error but "cannot connect now" (SQLSTATE 57P03: starting up, shutting down,
  in recovery), means the server accepts connections: no password is needed to know that.
* **mysql**: the server speaks first, with its handshake packet (protocol 10). That greeting
  means up; an error packet instead ("Too many connections", "Host is blocked") does not.
* **redis**: ``AUTH`` (when a password is set), ``SELECT`` (when ``db`` is not 0), ``PING``,
  sent at once; the answers must be ``+OK`` and ``+PONG``. An error answer (``-LOADING``,
  ``-NOAUTH``) fails the check with the server's words.
* **grpc**: ``grpc.health.v1.Health/Check`` over HTTP/2 without TLS (the ``h2`` state machine,
  pure Python, on the daemon's own event loop); passes when the status is ``SERVING``.

Every function returns ``(True, message)`` or raises :class:`ProbeFailed` with the reason;
the caller bounds it with the check's timeout.
"""

from __future__ import annotations

import errno
import struct

import anyio
import anyio.abc

from hive.config import GrpcCheck, MysqlCheck, PostgresCheck, RedisCheck

__all__ = ["ProbeFailed", "grpc_probe", "mysql_probe", "postgres_probe", "redis_probe"]

# What a probe reads at most: greetings and status answers are far smaller.
_READ_CAP = 64 * 1024


class ProbeFailed(Exception):
    """A probe failed; the message says why."""


# ---- the connection ------------------------------------------------------------------------


def connect_error(exc: OSError, host: str, port: int) -> str:
    """The most specific reason from anyio's "All connection attempts failed" wrapper."""
    cause: BaseException | None = exc
    while isinstance(cause, OSError) and cause.errno is None and cause.__cause__ is not None:
        cause = cause.__cause__
    code = cause.errno if isinstance(cause, OSError) else None
    if code == errno.ECONNREFUSED:
        return f"connection refused on {host}:{port}"
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return f"cannot connect to {host}:{port}: {reason}"


class _Reader:
    """Reads exactly what a probe needs from one connection."""

    def __init__(self, stream: anyio.abc.SocketStream, what: str) -> None:
        self.stream = stream
        self.what = what  # "PostgreSQL", ...: for "closed without ..." messages
        self.buffer = b""
        self.received = 0

    async def more(self) -> None:
        if self.received >= _READ_CAP:
            raise ProbeFailed(f"the {self.what} answer is too long")
        try:
            chunk = await self.stream.receive(_READ_CAP - self.received)
        except anyio.EndOfStream:
            raise ProbeFailed(f"connection closed without a {self.what} answer") from None
        except (anyio.BrokenResourceError, OSError) as exc:
            raise ProbeFailed(f"connection reset before a {self.what} answer ({exc or 'reset'})") from None
        self.received += len(chunk)
        self.buffer += chunk

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            await self.more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            await self.more()
        data, self.buffer = self.buffer.split(b"\r\n", 1)
        return data


async def _open(host: str, port: int) -> anyio.abc.SocketStream:
    try:
        return await anyio.connect_tcp(host, port)
    except OSError as exc:
        raise ProbeFailed(connect_error(exc, host, port)) from None


async def _send(stream: anyio.abc.SocketStream, data: bytes, what: str) -> None:
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise ProbeFailed(f"connection reset before a {what} answer ({exc or 'reset'})") from None


def _text(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- postgres ------------------------------------------------------------------------------

_PG_PROTOCOL = 3 << 16
_PG_CANNOT_CONNECT_NOW = "57P03"
_PG_AUTH = {0: "no password needed", 3: "password", 5: "md5 password", 10: "SASL"}


def _pg_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse: code letter → text."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


async def postgres_probe(port: int, check: PostgresCheck) -> tuple[bool, str]:
    params = [b"user", check.user.encode(), b"database", (check.database or check.user).encode()]
    body = struct.pack("!I", _PG_PROTOCOL) + b"".join(p + b"\0" for p in params) + b"\0"
    stream = await _open(check.host, port)
    async with stream:
        await _send(stream, struct.pack("!I", len(body) + 4) + body, "PostgreSQL")
        reader = _Reader(stream, "PostgreSQL")
        kind, length = struct.unpack("!cI", await reader.exactly(5))
        if kind not in (b"R", b"E") or not 4 <= length <= _READ_CAP:
            raise ProbeFailed(f"not a PostgreSQL server on {check.host}:{port} (it answered {kind!r})")
        payload = await reader.exactly(length - 4)
    if kind == b"R":
        method = struct.unpack("!I", payload[:4])[0] if len(payload) >= 4 else -1
        how = _PG_AUTH.get(method, f"authentication method {method}")
        return True, f"PostgreSQL accepting connections on {check.host}:{port} ({how})"
    fields = _pg_fields(payload)
    code, message = fields.get("C", ""), fields.get("M", "no message")
    if code == _PG_CANNOT_CONNECT_NOW:
        raise ProbeFailed(f"PostgreSQL is not accepting connections: {message}")
    # Like pg_isready: an error about who connects (a role or database that does not exist,
    # a refused login) still comes from a server that accepts connections.
    return True, f"PostgreSQL accepting connections on {check.host}:{port} (it answered: {message})"


# ---- mysql / mariadb -----------------------------------------------------------------------


async def mysql_probe(port: int, check: MysqlCheck) -> tuple[bool, str]:
    stream = await _open(check.host, port)
    async with stream:
        reader = _Reader(stream, "MySQL greeting")
        header = await reader.exactly(4)
        length = int.from_bytes(header[:3], "little")
        if length == 0:
            raise ProbeFailed(f"not a MySQL server on {check.host}:{port} (empty packet)")
        payload = await reader.exactly(length)
    if payload[0] == 0x0A:
        version = payload[1:].split(b"\0", 1)[0].decode("ascii", "replace")
        return True, f"MySQL server {version} greeted on {check.host}:{port}"
    if payload[0] == 0xFF and len(payload) >= 3:
        code = int.from_bytes(payload[1:3], "little")
        message = payload[3:]
        if message.startswith(b"#"):
            message = message[6:]  # "#" and a five-character SQLSTATE
        raise ProbeFailed(f"MySQL refused the connection: error {code}: {_text(message)}")
    raise ProbeFailed(f"not a MySQL server on {check.host}:{port} (protocol {payload[0]})")


# ---- redis ---------------------------------------------------------------------------------


def _resp(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def redis_probe(port: int, check: RedisCheck) -> tuple[bool, str]:
    commands: list[tuple[str, bytes, bytes]] = []  # (name, request, the answer wanted)
    if check.password:
        auth = ("AUTH", check.username, check.password) if check.username else ("AUTH", check.password)
        commands.append(("AUTH", _resp(*auth), b"+OK"))
    if check.db:
        commands.append(("SELECT", _resp("SELECT", str(check.db)), b"+OK"))
    commands.append(("PING", _resp("PING"), b"+PONG"))
    stream = await _open(check.host, port)
    async with stream:
        await _send(stream, b"".join(request for _, request, _ in commands), "Redis")
        reader = _Reader(stream, "Redis")
        for name, _, wanted in commands:
            answer = await reader.line()
            if answer != wanted:
                said = _text(answer[1:] if answer[:1] in (b"-", b"+") else answer)
                if answer.startswith(b"-") and name == "PING" and said.startswith("NOAUTH"):
                    said += " (set the check's password)"
                raise ProbeFailed(f"Redis answered {name} with: {said}")
    return True, f"Redis answered PONG on {check.host}:{port}"


# ---- grpc ----------------------------------------------------------------------------------

_GRPC_PATH = "/grpc.health.v1.Health/Check"
_SERVING = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_GRPC_CODES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 12: "UNIMPLEMENTED", 13: "INTERNAL",
    14: "UNAVAILABLE", 16: "UNAUTHENTICATED",
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _health_request(service: str) -> bytes:
    """A gRPC message (flag, length, body) holding ``HealthCheckRequest{service}``."""
    name = service.encode()
    body = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\0" + struct.pack("!I", len(body)) + body


def _serving_status(message: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, a varint) from a gRPC message; 0 if absent."""
    if len(message) < 5:
        raise ProbeFailed("the gRPC answer is cut short")
    body = message[5 : 5 + struct.unpack("!I", message[1:5])[0]]
    index = 0
    while index < len(body):
        key = body[index]
        index += 1
        if key == 0x08:  # field 1, varint
            value = shift = 0
            while index < len(body):
                byte = body[index]
                index += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return value
            break
        raise ProbeFailed("the gRPC answer is not a HealthCheckResponse")
    return 0


async def grpc_probe(port: int, check: GrpcCheck) -> tuple[bool, str]:
    # Imported here: only projects with a grpc check pay for loading HTTP/2.
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(stream_id, [
        (":method", "POST"), (":scheme", "http"), (":path", _GRPC_PATH),
        (":authority", f"{check.host}:{port}"), ("content-type", "application/grpc"),
        ("te", "trailers"), ("user-agent", "hive-health"),
    ])
    connection.send_data(stream_id, _health_request(check.service), end_stream=True)
    stream = await _open(check.host, port)
    data = b""
    trailers: dict[str, str] = {}
    async with stream:
        reader = _Reader(stream, "gRPC")
        ended = False
        while not ended:
            await _send(stream, connection.data_to_send(), "gRPC")
            await reader.more()
            try:
                events = connection.receive_data(reader.buffer)
            except h2.exceptions.ProtocolError as exc:
                raise ProbeFailed(f"not a gRPC server on {check.host}:{port} (HTTP/2: {exc})") from None
            reader.buffer = b""
            for event in events:
                if isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    data += event.data or b""
                    connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    trailers.update((str(k), str(v)) for k, v in event.headers or [])
                elif isinstance(event, h2.events.StreamReset):
                    raise ProbeFailed(f"the gRPC server reset the call (error code {event.error_code})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ProbeFailed(f"the gRPC server closed the connection (error code {event.error_code})")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    ended = True
    status = trailers.get("grpc-status", "")
    what = f"service '{check.service}'" if check.service else "the server"
    if trailers.get(":status", "200") != "200":
        raise ProbeFailed(f"not a gRPC server on {check.host}:{port} (HTTP {trailers[':status']})")
    if status != "0":
        code = int(status) if status.isdigit() else -1
        name = _GRPC_CODES.get(code, f"code {status or 'missing'}")
        detail = trailers.get("grpc-message", "") or {
            5: f"the server has no health status for {what}",
            12: "the server has no grpc.health.v1.Health service",
        }.get(code, "")
        raise ProbeFailed(f"gRPC health check failed: {name}{': ' + detail if detail else ''}")
    serving = _serving_status(data)
    word = _SERVING.get(serving, str(serving))
    if serving != 1:
        raise ProbeFailed(f"gRPC health of {what}: {word}")
    return True, f"gRPC health of {what}: SERVING"
