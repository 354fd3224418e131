"""The supervisor driven in-process, through its real commands, with a fake runner."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from hive.daemon.store import StateStore
from hive.daemon.supervision import Phase
from hive_client import __version__
from tests.machine.harness import FakeRunner, InProcessHive

pytestmark = pytest.mark.anyio


def _project(directory: Path, *names: str, depends: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ['version: "1"', "services:"]
    for name in names:
        lines += [f"  {name}:", "    runner: {type: fake}"]
        if depends and name in depends:
            lines.append(f"    depends_on: [{depends[name]}]")
    (directory / "hive.yaml").write_text("\n".join(lines) + "\n")
    return directory


async def test_start_stop_restart(hive_home: Path, store: StateStore, fake: FakeRunner, tmp_path: Path) -> None:
    project = _project(tmp_path / "p", "web", "db", depends={"web": "db"})
    async with InProcessHive.running(hive_home, store, fake, keep_services=False) as hive:
        await hive.sources.add(str(project), "p")
        outcomes = await hive.supervisor.start(["p:web"])
        assert {o.fqn: o.result for o in outcomes} == {"p:web": "done", "p:db": "done"}
        assert fake.running() == {"p:web": 1, "p:db": 1}
        outcomes = await hive.supervisor.restart("p:web")
        assert [o.result for o in outcomes if o.fqn == "p:web"] == ["done"]
        assert fake.running() == {"p:web": 1, "p:db": 1}
        await hive.supervisor.stop(["p:web", "p:db"])
        assert fake.running() == {}
        assert hive.supervisor.services["p:web"].instances[0].phase is Phase.STOPPED


async def test_start_racing_a_remove_leaves_nothing(
    hive_home: Path, store: StateStore, fake: FakeRunner, tmp_path: Path
) -> None:
    project = _project(tmp_path / "p", *(f"s{n}" for n in range(10)))
    async with InProcessHive.running(hive_home, store, fake, keep_services=False) as hive:
        for _ in range(20):
            await hive.sources.add(str(project), "p")
            async with anyio.create_task_group() as both:
                both.start_soon(hive.sources.start, "p", [])
                await anyio.lowlevel.checkpoint()
                both.start_soon(hive.sources.remove, "p")
            assert fake.running() == {}
            assert hive.supervisor.services == {}


async def test_daemon_restart_adopts(hive_home: Path, store: StateStore, fake: FakeRunner, tmp_path: Path) -> None:
    project = _project(tmp_path / "p", "web")
    async with InProcessHive.running(hive_home, store, fake) as hive:
        await hive.sources.add(str(project), "p")
        await hive.supervisor.start(["p:web"])
    assert fake.running() == {"p:web": 1}
    async with InProcessHive.running(hive_home, store, fake, keep_services=False) as hive:
        assert hive.supervisor.services["p:web"].instances[0].phase is Phase.RUNNING
        assert fake.starts == 1  # adopted, not started again
    assert fake.running() == {}


async def _to_old_layout(store: StateStore, digest: str | None = None) -> None:
    """Rewrite every process row as a daemon before schema 2 wrote it: the daemon's keys
    (ports, log offsets, configuration digest) mixed into the runner's dict."""
    for fqn, instance, handle, ports, out, err, recorded in await store.fetch_all(
        "SELECT fqn, instance, handle, ports, stdout_offset, stderr_offset, config_digest FROM processes"
    ):
        mixed = {**json.loads(handle), "ports": json.loads(ports), "log_offsets": [out, err],
                 "config_digest": recorded if digest is None else digest}
        await store.execute(
            "UPDATE processes SET layout = 1, handle = ?, ports = '{}', stdout_offset = 0, stderr_offset = 0, "
            "config_digest = '' WHERE fqn = ? AND instance = ?", (json.dumps(mixed), fqn, instance))


async def test_upgraded_daemon_adopts_records_of_the_old_layout(
    hive_home: Path, store: StateStore, fake: FakeRunner, tmp_path: Path
) -> None:
    project = _project(tmp_path / "p", "web")
    async with InProcessHive.running(hive_home, store, fake) as hive:
        await hive.sources.add(str(project), "p")
        await hive.supervisor.start(["p:web"])
    await _to_old_layout(store)
    async with InProcessHive.running(hive_home, store, fake, keep_services=False) as hive:
        assert hive.supervisor.services["p:web"].instances[0].phase is Phase.RUNNING
        assert fake.starts == 1  # adopted from the old record, not started again
    assert fake.running() == {}


async def test_old_layout_digest_still_tells_an_older_configuration(
    hive_home: Path, store: StateStore, fake: FakeRunner, tmp_path: Path
) -> None:
    project = _project(tmp_path / "p", "web")
    async with InProcessHive.running(hive_home, store, fake) as hive:
        await hive.sources.add(str(project), "p")
        await hive.supervisor.start(["p:web"])
    await _to_old_layout(store, digest=f"{__version__}/0000000000000000")
    async with InProcessHive.running(hive_home, store, fake, keep_services=False) as hive:
        service = hive.supervisor.services["p:web"]
        with anyio.fail_after(5):  # its replacement is started in the background
            while service.instances[0].phase is not Phase.RUNNING:
                await service.changed.wait()
        assert fake.starts == 2  # the old record's digest said older: replaced
    assert fake.running() == {}
