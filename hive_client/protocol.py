"""The wire protocol, for those who speak it directly (the daemon, other clients).

Framing: a 4-byte big-endian length, then MessagePack of ``[id, message]``. Messages
are tagged by ``type``. A connection whose first byte is ``{`` speaks JSON lines
instead: one bare message per line, no ids.
"""

from ._framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    FrameReader,
    decode_envelope,
    decode_request,
    decode_response,
    encode_frame,
    encode_json_line,
    json_request_decoder,
    json_response_decoder,
)
from ._messages import *  # noqa: F403 - the message set is this module's surface
from ._messages import __all__ as _message_names

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "FrameReader",
    "decode_envelope",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_json_line",
    "json_request_decoder",
    "json_response_decoder",
    *_message_names,
]
