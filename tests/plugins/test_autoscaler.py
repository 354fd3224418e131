"""The autoscaler with real CPU-burning services: up to the maximum under load, down to the
minimum after it, every decision published with its reason, none inside the cooldown."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, PluginNotice
from tests.engines import IMAGE, require_engine
from tests.plugins.conftest import StartWith
from tests.support import StartFailed, write_project

pytestmark = pytest.mark.anyio

BURN = """
import os, time
while not os.path.exists("calm"):
    pass
while True:
    time.sleep(3600)  # wait-ok: the calm child idles
"""

SETTINGS = """
[plugins.autoscaler.settings]
services = ["p:burner"]
check_interval = 0.2
window = 2
# Low: on a busy machine (other tests beside this one) each burner gets a share of a core.
cpu_scale_up_threshold = 0.15
cpu_scale_down_threshold = 0.05
min_instances = 1
max_instances = 3
cooldown = 1.0
"""


async def _notices(stream, count: int) -> list[PluginNotice]:  # type: ignore[no-untyped-def]
    found: list[PluginNotice] = []
    with anyio.fail_after(90):
        async for event in stream:
            assert isinstance(event, PluginNotice) and event.plugin == "autoscaler"
            found.append(event)
            if len(found) == count:
                return found
    raise AssertionError("the stream ended")


async def test_scales_up_under_load_and_down_after(start_with: StartWith, project_dir: Path) -> None:
    project_dir.mkdir(parents=True)
    (project_dir / "burn.py").write_text(BURN)
    write_project(project_dir, f"""
        version: "1"
        services:
          burner:
            runner: {{type: script, script: {{run: "exec {sys.executable} burn.py"}}}}
        """)
    daemon = start_with(SETTINGS)
    async with DaemonClient(daemon.socket, timeout=30) as client, \
            client.subscribe_events(kinds=["plugin_notice"]) as stream:
        await client.add_source(project_dir, name="p", start=True)
        up = await _notices(stream, 3)
        assert [(n.kind, n.data.get("to")) for n in up] == [("scaled", 2), ("scaled", 3), ("held", None)]
        assert "CPU" in up[0].message and "is above 0.15" in up[0].message
        assert up[2].message.endswith("but p:burner is at its maximum of 3")
        listed = [s for s in await client.list_services("p") if s.state == "running"]
        assert len(listed) == 3

        (project_dir / "calm").touch()
        down = await _notices(stream, 3)
        assert [(n.kind, n.data.get("to")) for n in down] == [("scaled", 2), ("scaled", 1), ("held", None)]
        assert "is below 0.05" in down[0].message
        assert down[2].message.endswith("but p:burner is at its minimum of 1")
        assert [s.fqn for s in await client.list_services("p")] == ["p:burner"]

    scaled = [n for n in up + down if n.kind == "scaled"]
    for earlier, later in itertools.pairwise(scaled):
        assert earlier.timestamp is not None and later.timestamp is not None
        assert (later.timestamp - earlier.timestamp).total_seconds() >= 1.0  # never inside the cooldown


async def test_wrong_settings_are_refused(start_with: StartWith) -> None:
    with pytest.raises(StartFailed) as caught:
        start_with(SETTINGS.replace("cpu_scale_down_threshold = 0.05", "cpu_scale_down_threshold = 0.9"))
    assert "[plugins.autoscaler.settings]" in str(caught.value)
    assert "cpu_scale_down_threshold must be below cpu_scale_up_threshold" in str(caught.value)


async def test_samples_containers_through_their_host_pid(start_with: StartWith, project_dir: Path) -> None:
    require_engine("docker")
    project_dir.mkdir(parents=True)
    script = "trap 'exit 0' TERM; while [ ! -f /work/calm ]; do :; done; sleep 1000 & wait"
    write_project(project_dir, f"""
        version: "1"
        services:
          burner:
            runner:
              type: docker
              docker: {{image: {IMAGE}, command: [sh, -c, "{script}"], volumes: ['./:/work'], network_mode: host}}
        """)
    daemon = start_with(SETTINGS.replace("max_instances = 3", "max_instances = 2"))
    try:
        async with DaemonClient(daemon.socket, timeout=60) as client, \
                client.subscribe_events(kinds=["plugin_notice"]) as stream:
            await client.add_source(project_dir, name="p", start=True)
            up = await _notices(stream, 2)
            assert [(n.kind, n.data.get("to")) for n in up] == [("scaled", 2), ("held", None)]
            (project_dir / "calm").touch()
            down = await _notices(stream, 1)
            assert (down[0].kind, down[0].data.get("to")) == ("scaled", 1)
    finally:
        daemon.stop()
        listed = await anyio.run_process(["docker", "ps", "-aq", "--filter", "label=hive.source=p"], check=False)
        if listed.stdout.split():
            await anyio.run_process(["docker", "rm", "-f", *listed.stdout.decode().split()], check=False)
