"""The autoscaler respects a manual `hive scale` for a cooldown, and its minimum and
maximum apply at once whatever the load, and its held notice comes once per limit reached
(real idle services, a real daemon)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hive_client import BlockingClient, DaemonClient
from tests.plugins.conftest import StartWith
from tests.plugins.test_autoscaler import _notices
from tests.support import wait_until, write_project

pytestmark = pytest.mark.anyio

PROJECT = """
    version: "1"
    services:
      idle:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


def _settings(**values: object) -> str:
    base = {"check_interval": 0.1, "window": 1, "cpu_scale_up_threshold": 0.9, "cooldown": 600.0, **values}
    return '[plugins.autoscaler.settings]\nservices = ["p:idle"]\n' + "".join(
        f"{key} = {value}\n" for key, value in base.items())


@contextlib.asynccontextmanager
async def _autoscaled(start_with: StartWith, project_dir: Path,
                      **settings: object) -> AsyncIterator[tuple[Path, DaemonClient, Any]]:
    """A daemon whose autoscaler watches the idle service p:idle, started; its socket, a
    client and the subscription to plugin notices."""
    daemon = start_with(_settings(**settings))
    write_project(project_dir, PROJECT)
    async with DaemonClient(daemon.socket, timeout=60) as client, \
            client.subscribe_events(kinds=["plugin_notice"]) as notices:
        await client.add_source(project_dir, name="p", start=True)
        yield daemon.socket, client, notices


@pytest.mark.parametrize("rounds_first", [0, 20], ids=["at-once", "after-twenty-rounds"])
async def test_one_held_notice_then_a_manual_scale_is_respected(
        start_with: StartWith, project_dir: Path, rounds_first: int) -> None:
    # Idle is far below the scale-down threshold: the autoscaler wants 1 instance, and says
    # once that the minimum holds it (not at every round).
    async with _autoscaled(start_with, project_dir, cpu_scale_down_threshold=0.5,
                           min_instances=1, max_instances=5) as (socket, client, notices):
        [held] = await _notices(notices, 1)
        assert held.kind == "held" and held.message.endswith("but p:idle is at its minimum of 1"), held.message

        def rounds() -> int:  # each of the autoscaler's rounds lists the services once
            with BlockingClient(socket, timeout=30) as reader:
                return {s.request: s.count for s in reader.request_stats().requests}["list_services"]

        if rounds_first:
            seen = rounds()  # more rounds, all still wanting fewer
            await wait_until(lambda: rounds() >= seen + rounds_first, timeout=60,
                             what=f"{rounds_first} more autoscaler rounds")
        await client.scale_service("p:idle", 3)
        [after] = await _notices(notices, 1)  # the held notice came once: the next is the manual scale
        assert (after.kind, after.data["instances"]) == ("manual", 3), after.message
        assert (await client.get_service_status("p:idle")).instances == 3


async def test_the_minimum_applies_whatever_the_load(start_with: StartWith, project_dir: Path) -> None:
    # A down threshold of 0 is never crossed: the old code raised to the minimum only then.
    async with _autoscaled(start_with, project_dir, cpu_scale_down_threshold=0.0,
                           min_instances=2, max_instances=5) as (_, client, notices):
        [notice] = await _notices(notices, 1)
        assert notice.kind == "scaled" and "from 1 to 2" in notice.message, notice.message
        assert (await client.get_service_status("p:idle")).instances == 2
