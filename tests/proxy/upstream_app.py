"""A small HTTP/1.1 + WebSocket server the proxy tests run as a real service.

``python upstream_app.py PORT NAME [sick]``. Keep-alive, Content-Length and chunked bodies.

- ``GET /whoami``: ``NAME PORT``; ``GET /headers``: the request line and headers as JSON;
- ``POST /echo``: the body back; ``GET /big?n=N``: N bytes, chunked;
- ``GET /slow``: the head and a first piece now, the rest once ``GET /release`` came
  (to the same instance: tests call it on the instance's own port);
- ``GET /health``: 200, or 503 after ``GET /sick`` (``GET /well`` undoes it);
- ``GET /close``: a body delimited by closing the connection;
- ``GET /own-cors``: an answer with its own ``Access-Control-Allow-Origin: *`` and ``Vary``;
- ``GET /ws``: a WebSocket that echoes text frames with ``NAME: `` before them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys

PORT = int(sys.argv[1])
NAME = sys.argv[2] if len(sys.argv) > 2 else "upstream"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
release = asyncio.Event()
sick = len(sys.argv) > 3 and sys.argv[3] == "sick"  # ``PORT NAME sick``: unhealthy from the start


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], list[tuple[str, str]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    pairs = [tuple(line.split(":", 1)) for line in lines[1:] if line]
    pairs = [(k.strip(), v.strip()) for k, v in pairs]
    return method, target, {k.lower(): v for k, v in pairs}, pairs


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += data[:-2]
    return await reader.readexactly(int(headers.get("content-length", "0")))


def response(status: int, body: bytes, content_type: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str) -> None:
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                  f"sec-websocket-accept: {accept}\r\n\r\n").encode())
    while True:
        try:
            first, second = await reader.readexactly(2)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
        if opcode == 8:  # close: answer it and end
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        if opcode == 9:  # ping
            writer.write(bytes([0x8A, len(payload)]) + payload)
            continue
        reply = f"{NAME}: ".encode() + payload
        header = bytes([0x81, len(reply)]) if len(reply) < 126 else bytes([0x81, 126]) + len(reply).to_bytes(2, "big")
        writer.write(header + reply)
        await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global sick
    try:
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers, pairs = head
            path = target.partition("?")[0]
            body = await read_body(reader, headers)
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers["sec-websocket-key"])
                return
            if path == "/headers":
                writer.write(response(200, json.dumps({"target": target, "headers": pairs}).encode(), "application/json"))
            elif path == "/echo":
                writer.write(response(200, body))
            elif path == "/big":
                size = int(target.partition("n=")[2])
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                piece = b"x" * 65536
                sent = 0
                while sent < size:
                    part = piece[: size - sent]
                    writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                    sent += len(part)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif path == "/slow":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
                await writer.drain()
                await release.wait()
                writer.write(b"-done")
            elif path == "/release":
                release.set()
                writer.write(response(200, b"released"))
            elif path == "/health":
                writer.write(response(503 if sick else 200, b"sick" if sick else b"ok"))
            elif path in ("/sick", "/well"):
                sick = path == "/sick"
                writer.write(response(200, path.encode()))
            elif path == "/own-cors":
                writer.write(b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\nvary: Accept-Encoding\r\n"
                             b"content-length: 3\r\n\r\nown")
            elif path == "/close":
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the close")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(response(200, f"{NAME} {PORT} {method} {target}".encode()))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    print(f"listening on {PORT}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
