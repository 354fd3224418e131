"""The error tree of Hive's client library.

Every exception raised by ``hive_client`` derives from :class:`HiveError`::

    HiveError
    ├── TransportError                 the socket failed; nothing was answered
    │   ├── DaemonNotRunning           no socket, or nobody listening on it
    │   ├── SocketPermissionDenied     the socket exists but we may not connect
    │   └── ConnectionClosed           the daemon hung up in the middle of a call
    ├── ProtocolError                  the bytes on the wire made no sense
    │   ├── FrameTooLarge              a frame over the size limit
    │   └── ProtocolVersionMismatch    client and daemon speak different versions
    ├── RequestTimeout                 a call exceeded its deadline
    └── DaemonError                    the daemon answered ``error{code, message}``
        ├── NotFound                   NOT_FOUND
        ├── InvalidRequest             INVALID_REQUEST, INVALID_FQN, INVALID_CONFIG
        ├── AlreadyExists              ALREADY_EXISTS, CONFLICT
        ├── PermissionDenied           PERMISSION_DENIED, FORBIDDEN
        ├── ServiceFailed              SERVICE_FAILED: a service did not do as asked
        └── Unavailable                SHUTTING_DOWN, BUSY, UNSUPPORTED, LIMIT_EXCEEDED,
                                       SLOW_CONSUMER

Lower-layer errors (``OSError``, ``msgspec`` errors, anyio's stream errors) are
translated at the boundary, so callers only ever catch these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

__all__ = [
    "AlreadyExists",
    "ConnectionClosed",
    "DaemonError",
    "DaemonNotRunning",
    "ErrorCode",
    "FrameTooLarge",
    "HiveError",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "ProtocolVersionMismatch",
    "RequestTimeout",
    "ServiceFailed",
    "SocketPermissionDenied",
    "TransportError",
    "Unavailable",
    "daemon_error",
]


class ErrorCode(StrEnum):
    """Stable codes carried by ``error{code, message}`` responses."""

    NOT_FOUND = "NOT_FOUND"
    INVALID_FQN = "INVALID_FQN"
    INVALID_CONFIG = "INVALID_CONFIG"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_REQUEST = "UNKNOWN_REQUEST"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    PROTOCOL_MISMATCH = "PROTOCOL_MISMATCH"
    HANDSHAKE_REQUIRED = "HANDSHAKE_REQUIRED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CONFLICT = "CONFLICT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    FORBIDDEN = "FORBIDDEN"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    BUSY = "BUSY"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    UNSUPPORTED = "UNSUPPORTED"
    TIMEOUT = "TIMEOUT"
    STORAGE = "STORAGE"
    BUILD_FAILED = "BUILD_FAILED"
    SERVICE_FAILED = "SERVICE_FAILED"
    HOOK_FAILED = "HOOK_FAILED"
    INTERNAL = "INTERNAL"


class HiveError(Exception):
    """Base of every error raised by ``hive_client``."""


class TransportError(HiveError):
    """The socket failed before an answer arrived."""


class DaemonNotRunning(TransportError):
    """No daemon listens on the socket path."""

    def __init__(self, socket_path: str, reason: str = "") -> None:
        self.socket_path = socket_path
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"the Hive daemon is not running: nothing listens on {socket_path}{detail}; "
            "start it with `hive start`"
        )


class SocketPermissionDenied(TransportError):
    """The socket exists but this user may not connect to it."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        super().__init__(
            f"permission denied on {socket_path}: the daemon belongs to another user; "
            "run as that user, or join the daemon's allowed group"
        )


class ConnectionClosed(TransportError):
    """The daemon closed the connection before answering."""


class ProtocolError(HiveError):
    """A frame could not be read or was not what the protocol allows."""


class FrameTooLarge(ProtocolError):
    """A frame's declared length exceeds the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")


class ProtocolVersionMismatch(ProtocolError):
    """The daemon speaks a protocol version this client does not."""


class NotText(HiveError):
    """A value to send is not valid UTF-8 (a file name in another encoding, say): the
    protocol carries text, so the request was not sent."""

    def __init__(self, value: str) -> None:
        shown = repr(os.fsencode(value))[2:-1] if _surrogates(value) else value
        self.value = shown
        super().__init__(f"'{shown}' is not valid UTF-8 and Hive's protocol carries text; "
                         "rename it (or use a path whose name is UTF-8) and try again")


def _surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


class RequestTimeout(HiveError):
    """A call did not complete within its timeout."""


class DaemonError(HiveError):
    """The daemon answered with ``error{code, message}``; ``outcomes``: what a start,
    stop, restart or scale did to each instance (``InstanceOutcome``), when it did not
    do all it was asked."""

    def __init__(self, code: str, message: str, outcomes: Sequence[Any] = ()) -> None:
        self.code = code
        self.message = message
        self.outcomes = list(outcomes)
        super().__init__(f"{code}: {message}")


class NotFound(DaemonError):
    """The named source, service or stream does not exist."""


class ServiceFailed(DaemonError):
    """A service did not start (or stop) as asked: it crashed, a hook failed, its port
    was taken; ``outcomes`` says which instance and why."""


class InvalidRequest(DaemonError):
    """The request, a name in it, or a configuration it carries is invalid."""


class AlreadyExists(DaemonError):
    """The thing to create exists already, or conflicts with another."""


class PermissionDenied(DaemonError):
    """The daemon refused the caller (uid or scope)."""


class Unavailable(DaemonError):
    """The daemon cannot serve this now (shutting down, busy, unsupported)."""


_CODE_CLASSES: dict[str, type[DaemonError]] = {
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.INVALID_FQN: InvalidRequest,
    ErrorCode.INVALID_CONFIG: InvalidRequest,
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.UNKNOWN_REQUEST: InvalidRequest,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.CONFLICT: AlreadyExists,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.FORBIDDEN: PermissionDenied,
    ErrorCode.SHUTTING_DOWN: Unavailable,
    ErrorCode.BUSY: Unavailable,
    ErrorCode.LIMIT_EXCEEDED: Unavailable,
    ErrorCode.SLOW_CONSUMER: Unavailable,
    ErrorCode.UNSUPPORTED: Unavailable,
    ErrorCode.SERVICE_FAILED: ServiceFailed,
}


def daemon_error(code: str, message: str, outcomes: Sequence[Any] = ()) -> DaemonError:
    """The most specific :class:`DaemonError` subclass for ``code``."""
    return _CODE_CLASSES.get(code, DaemonError)(code, message, outcomes)
