"""A signaling server as a process of its own, for the tests that kill it.

    python signaling_server.py PORT LOG

It listens on 127.0.0.1:PORT, appends every message it receives to LOG (one JSON line,
flushed, so what it got before a SIGKILL is there), sends each line of its stdin to the
newest connection, printing ``sent`` once it is written to the socket, and prints
``listening`` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def main(port: int, log: TextIO) -> None:
    connections: list[ServerConnection] = []
    connected = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        connections.append(connection)
        connected.set()
        try:
            async for raw in connection:
                log.write(json.dumps(json.loads(raw)) + "\n")
                log.flush()
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", port):
        print("listening", flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            await connected.wait()
            await connections[-1].send(line.strip())
            print("sent", flush=True)


if __name__ == "__main__":
    with open(sys.argv[2], "a", encoding="utf-8") as received:
        asyncio.run(main(int(sys.argv[1]), received))
