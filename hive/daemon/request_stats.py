"""The daemon's own request counts: how many requests of each type it answered, how many
of those were errors, and how long they took, as a histogram (``request_stats``, read by
the metrics plugin). Only unary requests: a stream (logs, events) lasts as long as its
client wants, so its duration says nothing of the daemon's speed.

Recording is two dictionary lookups and a bisect per request: cheap next to decoding one.
"""

from __future__ import annotations

from bisect import bisect_left

from hive_client import RequestStat
from hive_client.protocol import RequestStatsReply

__all__ = ["BUCKETS", "RequestStats"]

# Upper bounds in seconds (Prometheus' default buckets, with finer ones below 5 ms, where
# the daemon's answers are); the last bucket, +Inf, is ``count``.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
           5.0, 10.0)


class _Counts:
    __slots__ = ("count", "errors", "in_bucket", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.seconds = 0.0
        self.in_bucket = [0] * (len(BUCKETS) + 1)  # the last: above every bound


class RequestStats:
    """Counts per request type (its tag)."""

    def __init__(self) -> None:
        self._by_request: dict[str, _Counts] = {}

    def record(self, request: str, seconds: float, *, error: bool) -> None:
        counts = self._by_request.get(request)
        if counts is None:
            counts = self._by_request[request] = _Counts()
        counts.count += 1
        counts.errors += error
        counts.seconds += seconds
        counts.in_bucket[bisect_left(BUCKETS, seconds)] += 1

    def reply(self) -> RequestStatsReply:
        stats = []
        for request in sorted(self._by_request):
            counts = self._by_request[request]
            cumulative, running = [], 0
            for n in counts.in_bucket[:-1]:
                running += n
                cumulative.append(running)
            stats.append(RequestStat(request=request, count=counts.count, errors=counts.errors,
                                     seconds=counts.seconds, buckets=cumulative))
        return RequestStatsReply(bounds=list(BUCKETS), requests=stats)
