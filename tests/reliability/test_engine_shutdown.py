"""An engine's shutdown told from a user's ``docker stop``, on a dockerd of the test's own.

dockerd, on SIGTERM, removes its socket first, then stops every container (a ``kill``
event each), then ends its event stream once the last one has stopped. A container it
stopped is a failure whatever its exit code; one a user stopped (``docker stop``) exited
as it says. The runner asks the engine on a connection of its own right after the exit:
no answer is the shutdown. (It waited 2 s for the event stream's end before: a shutdown
that took longer, one slow container among quick ones, made the quick ones' exits look
like their own, and ``on-failure`` did not restart them.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import anyio
import pytest

from runners.base import ExitStatus, RunSpec
from runners.docker import DockerRunner
from tests.engines import IMAGE
from tests.reliability.test_faults import PrivateDockerd, _private_engine_or_skip
from tests.runners.helpers import make_spec, output_contains

pytestmark = pytest.mark.anyio

QUICK = "echo up; trap 'exit 0' TERM; sleep 1000 & wait"
SLOW = "echo up; trap 'sleep 4; exit 0' TERM; sleep 1000 & wait"  # the shutdown waits for it


def container(home: Path, source: str, service: str, command: str) -> RunSpec:
    config = {"image": IMAGE, "network_mode": "none", "command": ["sh", "-c", command]}
    return make_spec(home, "", fqn=f"{source}:{service}", config=config,
                     stdout_path=str(home / f"{service}.out"), stderr_path=str(home / f"{service}.out"))


def start_with_image(engine: PrivateDockerd) -> None:
    engine.start()
    with subprocess.Popen(["docker", "save", IMAGE], stdout=subprocess.PIPE) as saved:
        loaded = engine.docker("load", stdin=saved.stdout)
    assert loaded.returncode == 0, loaded.stderr


async def test_a_shutdown_longer_than_two_seconds_still_fails_each_container(tmp_path: Path) -> None:
    _private_engine_or_skip()
    engine = PrivateDockerd(Path(tempfile.mkdtemp(prefix="hvd-", dir="/tmp")))
    try:
        await anyio.to_thread.run_sync(start_with_image, engine)
        runner = DockerRunner()
        runner.configure({"socket": str(engine.socket)})
        source = f"t{uuid.uuid4().hex[:8]}"
        specs = {name: container(tmp_path, source, name, command)
                 for name, command in (("quick", QUICK), ("slow", SLOW), ("mine", QUICK))}
        handles = {name: await runner.start(spec) for name, spec in specs.items()}
        for spec in specs.values():
            await output_contains(spec.stdout_path, "up", timeout=30)

        # A user's `docker stop`: the container's own exit, no cause.
        stopped = await anyio.to_thread.run_sync(engine.docker, "stop", "-t", "10", handles["mine"].container_id)
        assert stopped.returncode == 0, stopped.stderr
        with anyio.fail_after(30):
            assert await handles["mine"].wait() == ExitStatus(exit_code=0)

        statuses: dict[str, ExitStatus] = {}

        async def wait(name: str) -> None:
            statuses[name] = await handles[name].wait()

        async with anyio.create_task_group() as tasks:
            for name in ("quick", "slow"):
                tasks.start_soon(wait, name)
            assert engine.process is not None
            engine.process.send_signal(signal.SIGTERM)  # what `systemctl stop docker` sends
            await anyio.to_thread.run_sync(engine.process.wait, 120)
            await anyio.to_thread.run_sync(engine.start)  # the statuses are told once it is back
        for name in ("quick", "slow"):
            assert statuses[name] == ExitStatus(
                exit_code=0, cause="stopped by the Docker engine's shutdown (exit code 0)"), name
    finally:
        engine.close()
        shutil.rmtree(engine.root, ignore_errors=True)
