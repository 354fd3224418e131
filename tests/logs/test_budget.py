"""The daemon-wide budget of in-memory lines: many busy services cannot add up to
gigabytes, quiet ones keep their lines, and the log files keep everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive.daemon.logs._buffer import LINE_COST
from hive.daemon.settings import LogsSection
from tests.logs.helpers import running_hub
from tests.support import wait_until

pytestmark = pytest.mark.anyio

BUDGET = 400 * LINE_COST  # room for about 300 of the lines below across all services


def _buffered(hub, fqn: str) -> int:
    return len(hub.query(fqn))


async def test_busy_services_share_the_budget_and_quiet_ones_keep_theirs(home: Path) -> None:
    async with running_hub(home, buffer_total_bytes=BUDGET) as hub:
        hub.note("p:quiet", "the only line of a quiet service")
        busy = [f"p:busy{i}" for i in range(8)]
        for round_ in range(500):
            for fqn in busy:
                hub.note(fqn, f"{fqn} line {round_:04d}")
        share = BUDGET // 9
        for fqn in busy:
            kept = hub.query(fqn)
            # The newest lines stay, the oldest went, and each busy service holds about
            # its share (more by what the quiet one leaves unused, never twice as much).
            assert kept[-1].message == f"{fqn} line 0499"
            assert share // 2 < sum(len(line.message) + LINE_COST for line in kept) <= 2 * share
        assert [line.message for line in hub.query("p:quiet")] == ["the only line of a quiet service"]
        total = sum(len(line.message) + LINE_COST for line in hub.query())
        assert total <= BUDGET
        # The files have every line.
        for fqn in busy:
            path = hub.log_path(fqn)
            await wait_until(lambda path=path, fqn=fqn: path.exists() and path.read_text().count(f"{fqn} line ") == 500,
                             what=f"all 500 lines of {fqn} in its file")


async def test_a_smaller_budget_on_reload_trims_at_once(home: Path) -> None:
    async with running_hub(home) as hub:
        for round_ in range(300):
            for fqn in ("p:a", "p:b"):
                hub.note(fqn, f"{fqn} line {round_}")
        assert _buffered(hub, "p:a") == _buffered(hub, "p:b") == 300
        hub.reconfigure(LogsSection(buffer_total_bytes=100 * LINE_COST))
        for fqn in ("p:a", "p:b"):
            kept = hub.query(fqn)
            assert 0 < len(kept) <= 50 and kept[-1].message == f"{fqn} line 299"
