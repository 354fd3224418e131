"""DNS messages, as much as the responder reads and writes (RFC 1035 §4).

It reads a query's header and its one question, and writes two kinds of answer: the
addresses of a route host, and an empty answer with a response code (NODATA, FORMERR,
NOTIMP, SERVFAIL). Everything else is the upstream's: forwarded queries and their answers
pass through as bytes. The question is echoed as the client sent it (its letter case
too, which some resolvers randomise and check).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "AAAA",
    "ANY",
    "CLASS_IN",
    "FORMERR",
    "NOERROR",
    "NOTIMP",
    "SERVFAIL",
    "UDP_LIMIT",
    "A",
    "Malformed",
    "Question",
    "address_answer",
    "parse_query",
    "rcode_answer",
    "same_question",
]

A, AAAA, ANY = 1, 28, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NOTIMP = 0, 1, 2, 4
UDP_LIMIT = 512  # an answer of ours over UDP (no EDNS read): more is truncated

_HEADER = struct.Struct(">HHHHHH")
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_OPCODE = 0x7800
_MAX_NAME = 255


class Malformed(Exception):
    """A query that is not served. ``rcode`` is the error to answer with; None: drop it
    (too short to answer, or an answer itself, which must never be answered)."""

    def __init__(self, rcode: int | None) -> None:
        super().__init__(rcode)
        self.rcode = rcode


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    flags: int
    labels: tuple[bytes, ...]  # lower case (ASCII); () for the root
    qtype: int
    qclass: int
    end: int  # the offset just past the question

    @property
    def name(self) -> str:
        return ".".join(label.decode("latin-1") for label in self.labels)


def parse_query(packet: bytes) -> Question:
    """The question of a standard query; raises :class:`Malformed`."""
    if len(packet) < _HEADER.size:
        raise Malformed(None)
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & _QR:
        raise Malformed(None)
    if flags & _OPCODE:
        raise Malformed(NOTIMP)
    if qdcount != 1:
        raise Malformed(FORMERR)
    labels: list[bytes] = []
    offset, size = _HEADER.size, 0
    while True:
        if offset >= len(packet):
            raise Malformed(FORMERR)
        length = packet[offset]
        if length & 0xC0:  # a compression pointer (or a reserved label type) in a question
            raise Malformed(FORMERR)
        offset += 1
        if length == 0:
            break
        size += length + 1
        if size > _MAX_NAME or offset + length > len(packet):
            raise Malformed(FORMERR)
        labels.append(packet[offset : offset + length].lower())
        offset += length
    if offset + 4 > len(packet):
        raise Malformed(FORMERR)
    qtype, qclass = struct.unpack_from(">HH", packet, offset)
    return Question(ident, flags, tuple(labels), qtype, qclass, offset + 4)


def _header(question: Question, rcode: int, answers: int, *, authoritative: bool, truncated: bool = False) -> bytes:
    flags = _QR | _RA | (question.flags & _RD) | rcode
    if authoritative:
        flags |= _AA
    if truncated:
        flags |= _TC
    return _HEADER.pack(question.id, flags, 1, answers, 0, 0)


def address_answer(question: Question, packet: bytes, addresses: list[bytes], ttl: int,
                   limit: int | None = None) -> bytes:
    """An authoritative NOERROR answer with one A or AAAA record per address (4 or 16
    bytes each); no address is NODATA. Over ``limit`` bytes, it is cut to the question
    with TC set, so the client asks again over TCP."""
    records = b"".join(
        struct.pack(">HHHIH", 0xC00C, A if len(ip) == 4 else AAAA, CLASS_IN, ttl, len(ip)) + ip
        for ip in addresses
    )
    echoed = packet[_HEADER.size : question.end]
    if limit is not None and _HEADER.size + len(echoed) + len(records) > limit:
        return _header(question, NOERROR, 0, authoritative=True, truncated=True) + echoed
    return _header(question, NOERROR, len(addresses), authoritative=True) + echoed + records


def rcode_answer(packet: bytes, rcode: int, question: Question | None = None) -> bytes:
    """An empty answer with ``rcode``; without a parsed question, only the header is
    echoed (``packet`` must hold at least one)."""
    if question is not None:
        return _header(question, rcode, 0, authoritative=False) + packet[_HEADER.size : question.end]
    ident, flags = struct.unpack_from(">HH", packet)
    return _HEADER.pack(ident, _QR | _RA | (flags & (_OPCODE | _RD)) | rcode, 0, 0, 0, 0)


def same_question(answer: bytes, question: Question, packet: bytes) -> bool:
    """Whether ``answer`` answers the query ``packet`` (same id, a response, the same
    question without regard to case): a stray or spoofed datagram is not relayed."""
    if len(answer) < _HEADER.size or answer[:2] != packet[:2] or not answer[2] & 0x80:
        return False
    if answer[4:6] == b"\0\0":  # no question: some servers answer FORMERR so
        return True
    return len(answer) >= question.end and answer[_HEADER.size : question.end].lower() == packet[_HEADER.size : question.end].lower()
