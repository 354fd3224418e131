"""The log files' timestamp text: what strftime gives, at every boundary of the cache."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hive.daemon.logs._parse import _TS_FORMAT, format_timestamp


def test_format_timestamp_matches_strftime_across_seconds_days_months_years() -> None:
    rng = random.Random(7)
    steps = [timedelta(microseconds=1), timedelta(microseconds=999_999), timedelta(seconds=1),
             timedelta(days=31), timedelta(days=365), timedelta(days=28, seconds=1)]
    moment = datetime(2026, 1, 31, 23, 59, 59, 999_990, tzinfo=UTC)
    for _ in range(20_000):
        moment += rng.choice(steps)
        assert format_timestamp(moment) == moment.strftime(_TS_FORMAT), moment
    # The same second and fields in another month or year is another text.
    for a, b in [(datetime(2026, 3, 5, 1, 2, 3, tzinfo=UTC), datetime(2026, 4, 5, 1, 2, 3, 7, tzinfo=UTC)),
                 (datetime(2026, 3, 5, 1, 2, 3, tzinfo=UTC), datetime(2027, 3, 5, 1, 2, 3, 9, tzinfo=UTC))]:
        assert format_timestamp(a) == "2026-03-05T01:02:03.000000Z"
        assert format_timestamp(b) == b.strftime(_TS_FORMAT)
