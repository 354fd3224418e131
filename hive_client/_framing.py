"""Framing, free of I/O: a 4-byte big-endian length, then that many bytes of MessagePack.

The payload of a binary frame is ``[id, message]``. Encoders and decoders are built once
here and shared by the client and the daemon.
"""

from __future__ import annotations

import functools
import struct
from typing import Generic, TypeVar, Union

import msgspec

from ._errors import FrameTooLarge, NotText
from ._messages import Request, RequestMessage, Response, ResponseMessage

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "FrameReader",
    "decode_envelope",
    "decode_request",
    "decode_response",
    "decode_response_as",
    "encode_frame",
    "encode_json_line",
    "json_request_decoder",
    "json_response_decoder",
]

DEFAULT_MAX_FRAME = 8 * 1024 * 1024
HEADER_SIZE = 4
_HEADER = struct.Struct(">I")

_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()

T = TypeVar("T")


class _Decoder(Generic[T]):
    """A msgspec decoder whose every failure is a ``msgspec.DecodeError``.

    msgspec raises RecursionError on input nested deeper than the interpreter's stack
    allows (a few hundred bytes of ``[[[[...``, well under any frame limit); as a
    DecodeError it is answered like any other undecodable input instead of escaping
    the connection's task and taking the daemon down.
    """

    __slots__ = ("_decoder",)

    def __init__(self, decoder: msgspec.msgpack.Decoder[T] | msgspec.json.Decoder[T]) -> None:
        self._decoder = decoder

    def decode(self, data: bytes | bytearray | memoryview | msgspec.Raw) -> T:
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise msgspec.DecodeError("input nested too deeply") from None


_envelope_decoder = _Decoder(msgspec.msgpack.Decoder(tuple[int, msgspec.Raw]))


@functools.cache
def _request_decoder() -> _Decoder[Request]:
    # Built on first use: compiling a union costs milliseconds, and a client never
    # decodes requests (nor a daemon responses).
    return _Decoder(msgspec.msgpack.Decoder(RequestMessage))


@functools.cache
def _response_decoder() -> _Decoder[Response]:
    return _Decoder(msgspec.msgpack.Decoder(ResponseMessage))


@functools.cache
def json_request_decoder() -> _Decoder[Request]:
    return _Decoder(msgspec.json.Decoder(RequestMessage))


@functools.cache
def json_response_decoder() -> _Decoder[Response]:
    return _Decoder(msgspec.json.Decoder(ResponseMessage))


def encode_frame(msg_id: int, message: Request | Response) -> bytes:
    """One complete frame, header included."""
    buf = bytearray(HEADER_SIZE)
    try:
        _msgpack_encoder.encode_into((msg_id, message), buf, HEADER_SIZE)
    except UnicodeEncodeError as exc:  # a str holding undecodable bytes (surrogateescape)
        bad = exc.object if isinstance(exc.object, str) else str(exc.object)
        raise NotText(bad) from None
    _HEADER.pack_into(buf, 0, len(buf) - HEADER_SIZE)
    return bytes(buf)


def decode_envelope(payload: bytes | memoryview) -> tuple[int, msgspec.Raw]:
    """Split a frame payload into its id and the still-encoded message.

    Decoding in two steps keeps the id even when the message itself is invalid, so
    the error can be answered to the right caller, and it keeps validation paths
    relative to the message (``$.config.runner``, not ``$[1].config.runner``).
    """
    return _envelope_decoder.decode(payload)


def decode_request(raw: msgspec.Raw | bytes) -> Request:
    return _request_decoder().decode(raw)


def decode_response(raw: msgspec.Raw | bytes) -> Response:
    return _response_decoder().decode(raw)


@functools.lru_cache(maxsize=64)
def _narrow_decoder(types: tuple[type[Response], ...]) -> _Decoder[Response]:
    return _Decoder(msgspec.msgpack.Decoder(Union[types]))  # noqa: UP007


def decode_response_as(raw: msgspec.Raw | bytes, types: tuple[type[Response], ...]) -> Response:
    """Decode a response known to be one of ``types``.

    A decoder for a few types is built in microseconds, the one for every response in
    milliseconds: a one-shot client (``hive status``) feels the difference.
    """
    return _narrow_decoder(types).decode(raw)


def encode_json_line(message: Request | Response) -> bytes:
    return _json_encoder.encode(message) + b"\n"


class FrameReader:
    """Cuts a byte stream into frame payloads; refuses a frame over ``max_frame``."""

    __slots__ = ("_buf", "_max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_payload(self) -> bytes | None:
        """The next complete payload, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return None
        (size,) = _HEADER.unpack_from(buf, 0)
        if size > self._max_frame:
            raise FrameTooLarge(size, self._max_frame)
        end = HEADER_SIZE + size
        if len(buf) < end:
            return None
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return payload
