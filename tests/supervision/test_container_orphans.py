"""A container whose service was removed while no daemon ran is stopped by the next daemon,
as a script service's processes are: nothing runs unsupervised. The record is all there is
(the service's configuration is gone), against a real engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hive_client import DaemonClient
from tests.engines import IMAGE, require_engine
from tests.support import run_cli, start_daemon, wait_for, write_project

pytestmark = pytest.mark.anyio

_BOX = json.dumps({"type": "docker", "docker": {
    "image": IMAGE, "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
    "network_mode": "host"}})
_KEEP = '{type: script, script: {run: "sleep 1000"}}'


def _exists(container_id: str) -> bool:
    listed = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"id={container_id}"],
                            capture_output=True, text=True, check=False)
    return container_id in listed.stdout


def _remove(container_id: str) -> None:
    subprocess.run(["docker", "rm", "-f", container_id], capture_output=True, check=False)


async def test_a_container_of_a_removed_service_is_stopped_at_start_up(
    hive_env: Path, project_dir: Path
) -> None:
    require_engine("docker")
    write_project(project_dir, f'version: "1"\nservices:\n  box:\n    runner: {_BOX}\n  keep:\n    runner: {_KEEP}\n')
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        box = await client.get_service_status("p:box")
        keep = await client.get_service_status("p:keep")
    assert box.state == "running" and box.container_id
    daemon.kill9()  # the container runs on, unsupervised
    assert _exists(box.container_id)
    write_project(project_dir, f'version: "1"\nservices:\n  keep:\n    runner: {_KEEP}\n')

    started = run_cli("start")
    assert started.returncode == 0, started.stderr
    try:
        said = f"stopped p:box ({box.container_id}): its service no longer exists"
        # The line is written once the container is removed: wait for the line.
        wait_for(lambda: said in (hive_env / "logs" / "daemon.log").read_text(), timeout=60,
                 what="the daemon to say it stopped the orphan container")
        assert not _exists(box.container_id)
        async with DaemonClient() as client:
            kept = await client.get_service_status("p:keep")
        assert (kept.state, kept.pid) == ("running", keep.pid)  # adopted, untouched
    finally:
        run_cli("stop")
        _remove(box.container_id)
