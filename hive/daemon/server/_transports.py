"""A connection's two transports, MessagePack frames and JSON lines: each reads the
client's requests, bounded in size and time, and hands them to the dispatcher."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from hive_client import ErrorCode, FrameTooLarge
from hive_client.protocol import FrameReader, decode_envelope, decode_request, json_request_decoder

from ..client_limits import ReportsPerUid
from ._connection import Connection
from ._raw_stream import RECEIVE_SIZE, RawStream, linger

if TYPE_CHECKING:
    from ..app import App
    from ._dispatch import Dispatcher

__all__ = ["Transports"]

log = logging.getLogger("hive.server")


class Transports:
    """Reads a connection's requests in the transport its first byte picks: ``{`` for
    JSON lines, anything else for binary frames."""

    def __init__(self, app: App, dispatcher: Dispatcher, *, max_frame: int, max_inflight: int) -> None:
        self.app = app
        self._dispatcher = dispatcher
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self._timeouts = ReportsPerUid()

    async def serve(self, connection: Connection, stream: RawStream) -> None:
        """Serve ``connection`` until the client is done, gone, or timed out."""
        try:
            first = await self._receive(connection, stream, partial=False)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        if first is None:
            await linger(stream)
            return
        connection.frame_began = time.monotonic()
        if first[:1] == b"{":
            connection.json = True
            await self._serve_json(connection, stream, first)
        else:
            await self._serve_binary(connection, stream, first)

    async def _receive(self, connection: Connection, stream: RawStream, *, partial: bool) -> bytes | None:
        """The next bytes from the client, or None once it timed out (it has been told).

        ``partial``: a frame (or JSON line) has begun; it gets ``frame_timeout`` from its
        first byte (``connection.frame_began``). Otherwise a connection with nothing in
        flight and no stream may stay silent for ``idle_timeout``."""
        settings = self.app.settings.daemon
        while True:
            if partial and settings.frame_timeout > 0:
                deadline = connection.frame_began + settings.frame_timeout
                why = (f"an unfinished frame waited {settings.frame_timeout:g} s for its end "
                       "(daemon.frame_timeout); send each frame whole")
            elif not partial and settings.idle_timeout > 0 and connection.plugin is None:
                deadline = time.monotonic() + settings.idle_timeout
                why = (f"idle for {settings.idle_timeout:g} s with no request and no stream "
                       "(daemon.idle_timeout); connect again when needed")
            else:
                return await stream.receive(RECEIVE_SIZE)
            with anyio.move_on_at(deadline):
                return await stream.receive(RECEIVE_SIZE)
            if partial or not connection.busy:
                unreported = self._timeouts.report(connection.peer.uid)
                if unreported is not None:
                    more = f" ({unreported} more closed since the last report)" if unreported else ""
                    log.info("closed %s (uid %d): %s%s", connection.label, connection.peer.uid, why, more)
                await connection.send_error(0, ErrorCode.TIMEOUT, why)
                connection.closed = True
                return None

    async def _serve_binary(
        self, connection: Connection, stream: RawStream, first: bytes
    ) -> None:
        reader = FrameReader(self.max_frame)
        reader.feed(first)
        slots = anyio.Semaphore(self.max_inflight)
        async with anyio.create_task_group() as requests:
            try:
                while not connection.closed:
                    try:
                        payload = reader.next_payload()
                    except FrameTooLarge as exc:
                        # The stream cannot be resynchronised past an unread frame: close.
                        await connection.send_error(0, ErrorCode.FRAME_TOO_LARGE, str(exc))
                        await linger(stream)
                        break
                    if payload is None:
                        try:
                            data = await self._receive(connection, stream, partial=reader.buffered > 0)
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
                        if data is None:
                            await linger(stream)
                            break
                        if not reader.buffered:
                            connection.frame_began = time.monotonic()
                        reader.feed(data)
                        connection.hold_incoming(reader.buffered)
                        if connection.backlog.cut_reason:
                            await connection.cut_done.wait()
                            break
                        continue
                    connection.hold_incoming(reader.buffered)
                    # What is left belongs to the next frame: its time starts now.
                    connection.frame_began = time.monotonic()
                    try:
                        msg_id, raw = decode_envelope(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(
                            0, ErrorCode.INVALID_REQUEST, f"undecodable frame: {exc}"
                        )
                        continue
                    try:
                        request = decode_request(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(msg_id, ErrorCode.INVALID_REQUEST, _describe(exc))
                        continue
                    if connection.limit is not None:
                        await connection.limit.take()
                    await self._dispatcher.dispatch(connection, msg_id, request, requests, slots)
            finally:
                # The client is done sending: let answers in flight finish, end streams.
                connection.hold_incoming(0)
                connection.cancel_all_streams()

    async def _serve_json(
        self, connection: Connection, stream: RawStream, first: bytes
    ) -> None:
        buffer = bytearray(first)
        async with anyio.create_task_group() as streams:
            try:
                while not connection.closed:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        if len(buffer) > self.max_frame:
                            await connection.send_error(
                                0,
                                ErrorCode.FRAME_TOO_LARGE,
                                f"line longer than the limit of {self.max_frame} bytes",
                            )
                            await linger(stream)
                            break
                        try:
                            data = await self._receive(connection, stream, partial=bool(buffer))
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
                        if data is None:
                            await linger(stream)
                            break
                        if not buffer:
                            connection.frame_began = time.monotonic()
                        buffer += data
                        connection.hold_incoming(len(buffer))
                        if connection.backlog.cut_reason:
                            await connection.cut_done.wait()
                            break
                        continue
                    line = bytes(buffer[:newline]).strip()
                    del buffer[: newline + 1]
                    connection.hold_incoming(len(buffer))
                    connection.frame_began = time.monotonic()
                    if not line:
                        continue
                    try:
                        request = json_request_decoder().decode(line)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await connection.send_error(0, ErrorCode.INVALID_REQUEST, _describe(exc))
                        continue
                    # One answer per line, in order: unary requests run one at a time.
                    await self._dispatcher.dispatch(connection, 0, request, streams, None)
            finally:
                connection.hold_incoming(0)
                connection.cancel_all_streams()


def _describe(exc: msgspec.MsgspecError) -> str:
    text = str(exc)
    if text.endswith("- at `$.type`") or ("Invalid value" in text and "`$.type`" in text):
        return f"unknown request type: {text}"
    if isinstance(exc, msgspec.ValidationError):
        return f"invalid request: {text}"
    return f"malformed message: {text}"
