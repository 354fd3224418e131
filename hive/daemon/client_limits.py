"""Bounds on what clients can make the daemon hold: bytes queued to them, descriptors.

A client that asks for much and reads nothing (a log stream of a chatty service, pipelined
``get_logs``) would otherwise make the daemon hold every answer until it reads. Each
connection has a ``Backlog``: the bytes of its log-stream queues, of the frames that
wait for its socket, and of a frame it is still sending. A connection over its own allowance, or the one holding the most when
all of them together are over the daemon-wide budget, is cut off (``SLOW_CONSUMER``):
its streams end, what it had queued is dropped, and it is closed. Memory held for clients
never exceeds the budget by more than the frames being written at that moment.

Descriptors: the daemon keeps ``reserved_fds`` free for supervision (pidfds, capture
files, pipes of a service start), so a new client is turned away before it would eat into
them; a failing ``accept`` backs off and is logged once per episode, not once per try.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from collections.abc import Callable

__all__ = ["AcceptBackoff", "Backlog", "ClientBudget", "ReportsPerUid", "descriptors_left"]

log = logging.getLogger("hive.server")


class ClientBudget:
    """The daemon-wide count of bytes held for clients, and its two limits."""

    # Once this much was held at once and nearly all of it is released, ``drained`` is
    # called: the memory it took can go back to the system (allocator.Trimmer).
    DRAINED_FROM = 16 << 20

    def __init__(self, per_connection: int, total: int, drained: Callable[[], None] | None = None) -> None:
        self.per_connection = max(1, per_connection)
        self.total = max(1, total)
        self.held = 0
        self.peak = 0  # the most held since the last drain
        self._drained = drained
        self._backlogs: set[Backlog] = set()

    def _released(self) -> None:
        if self.peak >= self.DRAINED_FROM and self.held <= self.peak // 8:
            self.peak = self.held
            if self._drained is not None:
                self._drained()

    def backlog(self, cut_off: Callable[[str], None]) -> Backlog:
        """A new connection's account; ``cut_off(reason)`` is called once if it overflows."""
        backlog = Backlog(self, cut_off)
        self._backlogs.add(backlog)
        return backlog

    def _overflow(self, backlog: Backlog) -> None:
        if backlog.held > self.per_connection:
            backlog.cut(
                f"the client fell behind: {backlog.held} bytes held for it, over the limit of "
                f"{self.per_connection} (daemon.client_backlog_bytes); read faster, or ask for fewer lines"
            )
            return
        # Over the daemon-wide budget: the connection holding the most goes first (of
        # those not already going: what they hold is released within their grace).
        heaviest = max((b for b in self._backlogs if not b.cut_reason), key=lambda b: b.held, default=backlog)
        heaviest.cut(
            f"the client fell behind: {heaviest.held} bytes held for it while all clients together "
            f"reached the daemon's budget of {self.total} (daemon.clients_backlog_total_bytes)"
        )


class Backlog:
    """One connection's share: what its queues and unsent frames hold (bytes)."""

    __slots__ = ("_budget", "_cut_off", "cut_reason", "held")

    def __init__(self, budget: ClientBudget, cut_off: Callable[[str], None]) -> None:
        self._budget = budget
        self._cut_off = cut_off
        self.held = 0
        self.cut_reason = ""

    def charge(self, size: int) -> None:
        self.held += size
        budget = self._budget
        budget.held += size
        budget.peak = max(budget.peak, budget.held)
        if not self.cut_reason and (self.held > budget.per_connection or budget.held > budget.total):
            budget._overflow(self)

    def release(self, size: int) -> None:
        self.held -= size
        self._budget.held -= size
        self._budget._released()

    def cut(self, reason: str) -> None:
        if self.cut_reason:
            return
        self.cut_reason = reason
        self._cut_off(reason)

    def close(self) -> None:
        """The connection is gone: whatever it still holds is released by its holders."""
        self._budget._backlogs.discard(self)


def descriptors_left() -> int:
    """How many more descriptors this process may open (its soft limit minus those open)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # (listdir's own descriptor)
    except OSError:
        return 1 << 30  # no /proc: nothing to go by, do not refuse
    return soft - in_use


class AcceptBackoff:
    """After a failed ``accept`` (EMFILE, ENOBUFS): wait, doubling up to a second. Logged at
    most once a minute, saying how many failed since the last line: short of descriptors,
    accept fails and works by turns (each client turned away frees one), and a line per
    turn would flood the log."""

    FIRST = 0.01
    LONGEST = 1.0
    REPORT_EVERY = 60.0

    def __init__(self) -> None:
        self.delay = 0.0
        self.failures = 0  # in this episode (since the last accept that worked)
        self._reported_at = -math.inf
        self._unreported = 0  # failures since the last line
        self._episode_reported = False

    def failed(self, exc: OSError) -> float:
        """Count a failure; how long to wait before the next accept."""
        self.failures += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._reported_at >= self.REPORT_EVERY:
            more = f" ({self._unreported - 1} more failures since the last report)" if self._unreported > 1 else ""
            log.error("accept failed: %s; new clients wait until descriptors are free%s", exc, more)
            self._reported_at, self._unreported, self._episode_reported = now, 0, True
        self.delay = min(self.LONGEST, self.delay * 2 if self.delay else self.FIRST)
        return self.delay

    def succeeded(self) -> None:
        if self.failures:
            if self._episode_reported and self.failures > 1:
                log.info("accept works again after %d failures", self.failures)
            self.failures = 0
            self.delay = 0.0
            self._episode_reported = False


class ReportsPerUid:
    """Whether to log one event of a kind (a refused connection, a timed-out one): a uid's
    first is logged, then at most one line a minute for it, saying how many came meanwhile.
    A client that keeps connecting is refused (or closed) every time, but cannot flood the
    daemon's log."""

    REPORT_EVERY = 60.0
    _KEEP = 4096  # uids remembered; past it, those not refused in the last minute go

    def __init__(self) -> None:
        self._uids: dict[int, tuple[float, int]] = {}  # uid -> (last logged, refused since)

    def report(self, uid: int) -> int | None:
        """None: do not log this refusal; else log it, with this many not logged before it."""
        now = time.monotonic()
        last = self._uids.get(uid)
        if last is not None and now - last[0] < self.REPORT_EVERY:
            self._uids[uid] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._uids) >= self._KEEP:
            self._uids = {u: v for u, v in self._uids.items() if now - v[0] < self.REPORT_EVERY}
        self._uids[uid] = (now, 0)
        return last[1] if last is not None else 0
