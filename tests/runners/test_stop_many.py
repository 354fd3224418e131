"""Runner.stop_many: an instance that cannot be stopped does not cut the others short."""

from __future__ import annotations

import signal
from typing import Any

import anyio
import pytest

from runners.base import ExitStatus, RunnerError, ServiceHandle
from runners.script import ScriptRunner

pytestmark = pytest.mark.anyio


class _Handle(ServiceHandle):
    """An instance of a runner whose engine may be away (stop raises) or not."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.stopped = anyio.Event()

    def record(self) -> dict[str, Any]:
        return {}

    async def wait(self) -> ExitStatus:
        await self.stopped.wait()
        return ExitStatus(exit_code=0)

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        await anyio.lowlevel.checkpoint()
        if self.refuse:
            raise RunnerError("the engine at /run/docker.sock is not answering")
        self.stopped.set()
        return ExitStatus(exit_code=0)


async def test_one_refused_stop_leaves_the_others_stopped_and_one_error() -> None:
    handles = [_Handle(refuse=False), _Handle(refuse=True), _Handle(refuse=False), _Handle(refuse=True)]
    with pytest.raises(RunnerError) as caught:
        # The script runner hands handles that are not its own to the base stop_many.
        await ScriptRunner().stop_many(handles, signal.SIGTERM, 1.0)
    assert [h.stopped.is_set() for h in handles] == [True, False, True, False]
    assert str(caught.value) == "; ".join(["the engine at /run/docker.sock is not answering"] * 2)
