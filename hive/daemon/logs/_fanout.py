"""Fan-out: live lines to the streams that asked for them.

A subscription is a pattern (FQN glob), a minimum level, and a bounded drop-oldest
queue: a reader that falls behind loses its oldest lines, counted, and never slows the
pump or other readers. The queue is bounded twice: by lines, and by bytes
(``daemon.stream_queue_bytes``); what it holds is also charged to the client's
``Account`` (the connection's backlog), which cuts off a client over its budget.

Lines are offered only to the subscriptions that want them, indexed by service: a
pattern without wildcards (``proj:web``, ``web``, ``proj:web#2``) is looked up by the
line's FQN in a dict; patterns with wildcards are matched once per instance and the
result kept, updated as subscriptions come and go (never rebuilt wholesale). Twenty
thousand subscriptions to other services cost a line nothing.
"""

from __future__ import annotations

from typing import Protocol

from hive_client import LogLine, fqn_matches

from ..drop_oldest_queue import DropOldestQueue
from ._buffer import LINE_COST

__all__ = ["Account", "Fanout", "LogSubscription"]

_GLOB = frozenset("*?[")


class Account(Protocol):
    """Who pays for the lines a subscription holds (a connection's backlog)."""

    def charge(self, size: int) -> None: ...

    def release(self, size: int) -> None: ...

    def cut(self, reason: str) -> None:
        """End the client's connection with ``SLOW_CONSUMER`` and ``reason``."""
        ...


class LogSubscription(DropOldestQueue[LogLine]):
    """A live view of matching lines, bounded: when the reader falls behind, the
    oldest lines are dropped and counted (``take_dropped``), as with events."""

    def __init__(self, fanout: Fanout, pattern: str | None, min_rank: int, maxlen: int,
                 max_bytes: int, account: Account | None) -> None:
        super().__init__(maxlen)
        self._fanout = fanout
        self.pattern = pattern
        self.min_rank = min_rank
        self.max_bytes = max(1, max_bytes)
        self.bytes = 0  # what the held lines cost (estimated as the buffers do)
        self._account = account
        # Dropped since the reader last took a line: past a whole queue's worth, the
        # reader is not reading at all (its lag notice has not even been taken).
        self._stalled = 0

    def matches(self, fqn: str) -> bool:
        return fqn_matches(self.pattern, fqn)

    def offer(self, item: LogLine) -> None:
        if self._closed:
            return
        items = self._items
        cost = len(item.message) + LINE_COST
        self.bytes += cost
        account = self._account
        if account is not None:
            account.charge(cost)
        while items and (len(items) >= self._limit or self.bytes > self.max_bytes):
            old = len(items.popleft().message) + LINE_COST
            self.bytes -= old
            if account is not None:
                account.release(old)
            self.dropped += 1
            self._stalled += old
        items.append(item)
        if self._wakeup is not None:
            self._wakeup.set()
        if self._stalled > self.max_bytes and account is not None:
            account.cut(
                f"the client fell behind: a log stream dropped {self._stalled} bytes of lines while "
                f"its reader took none (daemon.stream_queue_bytes is {self.max_bytes}); "
                "read the stream, or narrow it to fewer services"
            )

    def prefill(self, lines: list[LogLine]) -> None:
        """The tail: the newest of ``lines`` that fit the queue; the rest counted as
        dropped (the client is told), not as a stall."""
        size = 0
        keep = len(lines)
        while keep and len(lines) - keep < self._limit:
            cost = len(lines[keep - 1].message) + LINE_COST
            if size + cost > self.max_bytes and keep < len(lines):
                break
            size += cost
            keep -= 1
        self.dropped += keep
        for line in lines[keep:]:
            self.offer(line)

    def _take(self) -> LogLine:
        item = self._items.popleft()
        self._stalled = 0
        cost = len(item.message) + LINE_COST
        self.bytes -= cost
        if self._account is not None:
            self._account.release(cost)
        return item

    def close(self) -> None:
        if not self.closed:
            self._fanout.remove(self)
        super().close()

    def __exit__(self, *exc_info: object) -> None:
        """The reader is done: drop what it did not take, and stop paying for it."""
        self.close()
        self._items.clear()
        if self._account is not None and self.bytes:
            self._account.release(self.bytes)
        self.bytes = 0


class Fanout:
    """The open subscriptions, indexed by what they want."""

    def __init__(self) -> None:
        self._count = 0
        self._everything: dict[LogSubscription, None] = {}  # no pattern, or "*"
        self._literal: dict[str, dict[LogSubscription, None]] = {}  # by the pattern's text
        self._globbed: dict[LogSubscription, None] = {}
        # Per instance seen, the wildcard subscriptions matching it (kept up to date).
        self._globbed_for: dict[str, dict[LogSubscription, None]] = {}

    def subscription(self, pattern: str | None, min_rank: int, maxlen: int,
                     max_bytes: int = 1 << 62, account: Account | None = None) -> LogSubscription:
        """A new subscription, not receiving yet: fill it (a tail), then ``add`` it."""
        return LogSubscription(self, pattern, min_rank, maxlen, max_bytes, account)

    def add(self, subscription: LogSubscription) -> None:
        self._count += 1
        pattern = subscription.pattern
        if not pattern or pattern == "*":
            self._everything[subscription] = None
        elif _GLOB.isdisjoint(pattern):
            self._literal.setdefault(pattern, {})[subscription] = None
        else:
            self._globbed[subscription] = None
            for fqn, subs in self._globbed_for.items():
                if subscription.matches(fqn):
                    subs[subscription] = None

    def remove(self, subscription: LogSubscription) -> None:
        pattern = subscription.pattern
        if not pattern or pattern == "*":
            found = self._everything.pop(subscription, 0) is None
        elif _GLOB.isdisjoint(pattern):
            subs = self._literal.get(pattern, {})
            found = subs.pop(subscription, 0) is None
            if not subs:
                self._literal.pop(pattern, None)
        else:
            found = self._globbed.pop(subscription, 0) is None
            if found:
                for subs in self._globbed_for.values():
                    subs.pop(subscription, None)
        if found:
            self._count -= 1

    def matching(self, fqn: str) -> list[LogSubscription]:
        """The subscriptions that want ``fqn``'s lines (before the level filter)."""
        found = list(self._everything)
        literal = self._literal
        if literal:
            base, _, instance = fqn.partition("#")
            service = base.partition(":")[2]
            # The literal patterns that name this instance: itself, its service in this
            # source, and its service in any source (with or without the instance).
            keys = {fqn, base, service, f"{service}#{instance}"} if instance else {fqn, service}
            for key in keys:
                subs = literal.get(key)
                if subs:
                    found.extend(subs)
        if self._globbed:
            subs = self._globbed_for.get(fqn)
            if subs is None:
                subs = self._globbed_for[fqn] = {s: None for s in self._globbed if s.matches(fqn)}
            found.extend(subs)
        return found

    def forget(self, fqn: str) -> None:
        self._globbed_for.pop(fqn, None)

    def close_all(self) -> None:
        """End every stream (they deliver what they hold first)."""
        every = [*self._everything, *self._globbed]
        for subs in self._literal.values():
            every.extend(subs)
        for subscription in every:
            subscription.close()

    def __len__(self) -> int:
        return self._count
