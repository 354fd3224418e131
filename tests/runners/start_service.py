"""Run as a program by the adoption tests: start one service with the script runner,
print its record as JSON, and exit (as a daemon would die), leaving the service running.

    python tests/runners/start_service.py '<RunSpec as JSON>' [--kill9]
"""

from __future__ import annotations

import json
import os
import signal
import sys

import anyio
import msgspec

from runners.base import RunSpec
from runners.script import ScriptRunner


async def main() -> None:
    spec = msgspec.json.decode(sys.argv[1], type=RunSpec)
    handle = await ScriptRunner().start(spec)
    print(json.dumps(handle.record()), flush=True)
    if "--kill9" in sys.argv:
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    anyio.run(main)
