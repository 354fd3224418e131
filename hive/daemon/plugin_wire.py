"""What the daemon and a plugin's child process say to each other on their control socket.

Frames are a 4-byte big-endian length and a msgpack body. The daemon sends :class:`Call`
(run one of the plugin's callbacks on its loop), :class:`Cancel` and :class:`Where` (where
its loop's thread is, answered by a thread of its own even while the loop is blocked);
the child answers :class:`Done` for each call and :class:`Frames` for each ``Where``, and
sends what the plugin logs as :class:`Log`.
The plugin's requests to the daemon do not go here: they use its client's socket pair.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from hive_client import DaemonEvent

__all__ = ["HEADER", "Call", "Cancel", "Done", "Frames", "Log", "ToChild", "ToDaemon", "Where", "decode_child",
           "decode_daemon", "frame"]

HEADER = struct.Struct(">I")


class Call(msgspec.Struct, tag="call", kw_only=True):
    id: int
    method: str  # load, connect, init, run, on_event, call, shutdown, disconnect, ping, configure
    event: DaemonEvent | None = None
    args: dict[str, Any] = {}


class Cancel(msgspec.Struct, tag="cancel"):
    id: int


class Where(msgspec.Struct, tag="where"):
    id: int
    full: bool  # the whole stack rather than the innermost frame


class Done(msgspec.Struct, tag="done", kw_only=True):
    id: int
    value: Any = None
    # "" (it returned), "cancelled", "call_error" (PluginCallError) or "error" (any other)
    failure: str = ""
    error: str = ""  # str(exc), or its type's name when that is empty
    error_type: str = ""
    traceback: str = ""


class Frames(msgspec.Struct, tag="frames"):
    id: int
    text: str


class Log(msgspec.Struct, tag="log"):
    """A record the plugin logged, for the daemon's log (which may be a file the child
    cannot reach)."""

    level: int
    logger: str
    text: str


ToChild = Call | Cancel | Where
ToDaemon = Done | Frames | Log

_encoder = msgspec.msgpack.Encoder()
_to_child = msgspec.msgpack.Decoder(ToChild)
_to_daemon = msgspec.msgpack.Decoder(ToDaemon)


def frame(message: ToChild | ToDaemon) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


def decode_child(body: bytes) -> ToChild:
    message: ToChild = _to_child.decode(body)
    return message


def decode_daemon(body: bytes) -> ToDaemon:
    message: ToDaemon = _to_daemon.decode(body)
    return message
