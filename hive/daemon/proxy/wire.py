"""HTTP/1.1 heads as the proxy rewrites them, and chunked framing.

Hop-by-hop headers (RFC 9110 §7.6.1, and those a ``Connection`` header names) end at the
proxy; each side gets the framing the proxy chose for it. The instance is told who asked
through ``X-Forwarded-For`` (appended to), ``-Proto`` and ``-Host`` (set: the proxy is
the edge, so a client's own value is not trusted). The client's ``Host`` is kept, as
Caddy does, so an app sees the name it is served under.
"""

from __future__ import annotations

from http import HTTPStatus

from hive.config import ProxyHeaders

__all__ = ["HOP_BY_HOP", "LAST_CHUNK", "RequestFacts", "chunk", "request_head", "response_head"]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_CONNECTION_WORDS = frozenset({b"close", b"keep-alive", b"upgrade"})
LAST_CHUNK = b"0\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class RequestFacts:
    """What the proxy reads from a request's headers, in one pass over them."""

    __slots__ = ("accept", "chunked", "content_length", "dropped", "forwarded_for", "host", "origin", "preflight")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.host = b""
        self.accept = b""
        self.origin = b""
        self.preflight = False  # Access-Control-Request-Method came (a CORS preflight, with OPTIONS)
        self.forwarded_for = b""
        self.content_length = -1
        self.chunked = False
        dropped: set[bytes] | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                self.host = value
            elif lower == b"content-length":
                self.content_length = int(value) if value.strip().isdigit() else -2
            elif lower == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif lower == b"accept":
                self.accept = value
            elif lower == b"origin":
                self.origin = value
            elif lower == b"x-forwarded-for":
                self.forwarded_for = value
            elif lower == b"access-control-request-method":
                self.preflight = True
            elif lower == b"connection":
                # Headers a Connection header names are hop-by-hop too.
                tokens = {t.strip().lower() for t in value.split(b",")} - _CONNECTION_WORDS
                if tokens:
                    dropped = (dropped or set()) | tokens
        self.dropped: frozenset[bytes] = frozenset(dropped) if dropped else frozenset()


def request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], facts: RequestFacts, *,
    peer: str, proto: bytes, upgrade: bool, edits: ProxyHeaders,
) -> bytes:
    """The request line and headers the instance gets."""
    out = [b"%b %b HTTP/1.1\r\n" % (method, target)]
    edited = _has_edits(edits)
    removed = {name.lower().encode() for name in (*edits.remove, *edits.set)} if edited else frozenset()
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _FORWARDED or lower in facts.dropped or lower in removed:
            if upgrade and lower == b"upgrade":
                out.append(b"upgrade: %b\r\n" % value)
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    forwarded = facts.forwarded_for + b", " + peer.encode() if facts.forwarded_for else peer.encode()
    out.append(b"x-forwarded-for: %b\r\nx-forwarded-proto: %b\r\n" % (forwarded, proto))
    if facts.host:
        out.append(b"x-forwarded-host: %b\r\n" % facts.host)
    if upgrade:
        out.append(b"connection: upgrade\r\n")
    elif facts.chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    if edited:
        for key, text in (*edits.set.items(), *edits.add.items()):
            out.append(b"%b: %b\r\n" % (key.encode(), text.encode()))
    out.append(b"\r\n")
    return b"".join(out)


def _has_edits(edits: ProxyHeaders) -> bool:
    return bool(edits.add or edits.remove or edits.set)


def response_head(
    status: int, headers: list[tuple[bytes, bytes]], *, keep_alive: bool, chunked: bool,
    upgrade: bool, extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The status line and headers the client gets. ``extra`` (a plugin's: CORS) replaces
    the instance's headers of those names, but for ``Vary``, which lists both."""
    out = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b""))]
    replaced = {name for name, _ in extra if name != b"vary"} if extra else ()
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in replaced:
            if upgrade and lower == b"upgrade":
                out.append(b"upgrade: %b\r\n" % value)
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    if extra:
        out.extend(b"%b: %b\r\n" % pair for pair in extra)
    if upgrade:
        out.append(b"connection: upgrade\r\n\r\n")
    else:
        if chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n")
    return b"".join(out)

