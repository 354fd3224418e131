"""Short of descriptors, ``accept`` fails and works by turns (each client turned away frees
one): the daemon's log gets one line a minute, not one per turn."""

from __future__ import annotations

import errno
import logging
import time

import pytest

from hive.daemon.client_limits import AcceptBackoff

EMFILE = OSError(errno.EMFILE, "Too many open files")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_failing_by_turns_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    backoff = AcceptBackoff()
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            assert backoff.failed(EMFILE) == AcceptBackoff.FIRST  # each turn starts its wait again
            backoff.succeeded()
    assert _lines(caplog) == [
        "accept failed: [Errno 24] Too many open files; new clients wait until descriptors are free"]


def test_the_next_line_counts_what_was_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    backoff = AcceptBackoff()
    backoff.REPORT_EVERY = 0.2
    with caplog.at_level(logging.INFO):
        backoff.failed(EMFILE)
        backoff.succeeded()
        turns, deadline = 0, time.monotonic() + 30
        while len(_lines(caplog)) < 2 and time.monotonic() < deadline:
            backoff.failed(EMFILE)
            turns += 1
        backoff.succeeded()
    lines = _lines(caplog)
    assert len(lines) == 3
    assert lines[1].endswith(f"({turns - 1} more failures since the last report)")
    assert lines[2] == f"accept works again after {turns} failures"
