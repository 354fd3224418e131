"""What the reliability suite held, tried and lost, gathered into one table.

Each test calls :func:`record` with its outcome. The rows ride on the test's report
(``user_properties``, so they reach pytest-xdist's controller from its workers), and
tests/conftest.py prints the table at the end of the run and, when ``HIVE_RELIABILITY_REPORT`` names a file, writes it there as
Markdown (the table in docs/reliability.md comes from such a run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Row", "collect", "markdown", "record", "rows", "take_recorded", "write_report"]


@dataclass(frozen=True)
class Row:
    area: str  # load, faults, bad input, access
    check: str  # what was done, e.g. "kill -9 during start-up, reload and scale"
    tried: str  # how much: "20 kills", "1,000 services", "4,210 messages"
    held: str  # the observed outcome: "all answered, p99 41 ms, RSS 88 MiB"
    lost: str = "none"  # data lost; the goal is none


_RECORDED: list[Row] = []  # in the process that runs the test
_COLLECTED: list[Row] = []  # in the process that reports: from the tests' reports


def record(area: str, check: str, tried: str, held: str, lost: str = "none") -> None:
    """Note one outcome for the summary table (call it after the assertions pass)."""
    _RECORDED.append(Row(area, check, tried, held, lost))


def take_recorded() -> list[tuple[str, str, str, str, str]]:
    """The rows recorded since the last call, as plain tuples (they cross to xdist's controller)."""
    taken = [(r.area, r.check, r.tried, r.held, r.lost) for r in _RECORDED]
    _RECORDED.clear()
    return taken


def collect(fields: tuple[str, str, str, str, str]) -> None:
    _COLLECTED.append(Row(*fields))


def rows() -> list[Row]:
    return list(_COLLECTED)


def markdown(found: list[Row]) -> str:
    lines = ["| area | check | tried | held | data lost |", "|---|---|---|---|---|"]
    lines += [f"| {r.area} | {r.check} | {r.tried} | {r.held} | {r.lost} |" for r in found]
    return "\n".join(lines) + "\n"


def write_report(found: list[Row]) -> Path | None:
    target = os.environ.get("HIVE_RELIABILITY_REPORT")
    if not target or not found:
        return None
    path = Path(target)
    path.write_text(markdown(found))
    return path
