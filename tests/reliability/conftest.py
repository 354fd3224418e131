"""The reliability suite: load, faults, bad input and access, each against a real daemon."""

from __future__ import annotations

import pytest

from tests.reliability.report import rows, write_report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = rows()
    if not found:
        return
    terminalreporter.section("reliability")
    width = max(len(r.check) for r in found)
    for r in found:
        terminalreporter.write_line(f"{r.area:<10} {r.check:<{width}}  {r.tried:<22} {r.held}  lost: {r.lost}")
    path = write_report(found)
    if path is not None:
        terminalreporter.write_line(f"table written to {path}")
