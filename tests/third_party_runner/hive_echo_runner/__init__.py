"""The ``echo`` runner: prints ``message`` every ``interval`` seconds, ``count`` times
(0: for ever), then exits 0.

    runner:
      type: echo
      echo: {message: hello, interval: 0.5, count: 3}

It builds on Hive's runner contract only (``runners.base``) and lends the process work
to the script runner, as a third-party runner may.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import msgspec

from runners.base import Runner, RunnerError, RunSpec, ServiceHandle
from runners.script import ScriptRunner

__all__ = ["EchoRunner"]

_LOOP = (
    "import sys, time\n"
    "message, interval, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])\n"
    "n = 0\n"
    "while count == 0 or n < count:\n"
    "    n += 1\n"
    "    print(f'{message} {n}', flush=True)\n"
    "    if count == 0 or n < count:\n"
    "        time.sleep(interval)\n"
)


class EchoSettings(msgspec.Struct, forbid_unknown_fields=True):
    message: str
    interval: float = 1.0
    count: int = 0


class EchoRunner(Runner):
    name = "echo"

    def __init__(self) -> None:
        self._processes = ScriptRunner()

    async def start(self, spec: RunSpec) -> ServiceHandle:
        try:
            settings = msgspec.convert(spec.config, EchoSettings)
        except msgspec.ValidationError as exc:
            raise RunnerError(f"echo runner: {exc}") from None
        if settings.interval < 0 or settings.count < 0:
            raise RunnerError("echo runner: interval and count must not be negative")
        argv = [sys.executable, "-c", _LOOP, settings.message, str(settings.interval), str(settings.count)]
        command = "exec " + shlex.join(argv)  # several lines: a shell runs it, and execs
        return await self._processes.start(msgspec.structs.replace(spec, command=command, shell=None))

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ServiceHandle | None:
        return await self._processes.adopt(spec, record)

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        return await self._processes.discover(spec, marker)
