"""Fan-out: live lines to the streams that asked for them.

A subscription is a pattern (FQN glob), a minimum level, and a bounded drop-oldest
queue (``DropOldestQueue``, the type event subscriptions use too): a reader that falls
behind loses its oldest lines, counted, and never slows the pump or other readers.

Matching a pattern costs an fnmatch per instance, so ``Fanout`` keeps, per instance,
the list of subscriptions whose pattern matches it, rebuilt only after a subscription
comes or goes; the pump then pays a dict lookup per batch of lines, and a level
comparison per line and subscriber (inlined in ``_route.Batch.emit``).
"""

from __future__ import annotations

from hive_client import LogLine, fqn_matches

from ..drop_oldest_queue import DropOldestQueue

__all__ = ["Fanout", "LogSubscription"]


class LogSubscription(DropOldestQueue[LogLine]):
    """A live view of matching lines, bounded: when the reader falls behind, the
    oldest lines are dropped and counted (``take_dropped``), as with events."""

    def __init__(self, fanout: Fanout, pattern: str | None, min_rank: int, maxlen: int) -> None:
        super().__init__(maxlen)
        self._fanout = fanout
        self.pattern = pattern
        self.min_rank = min_rank

    def matches(self, fqn: str) -> bool:
        return fqn_matches(self.pattern, fqn)

    def close(self) -> None:
        if not self.closed:
            self._fanout.remove(self)
        super().close()


class Fanout:
    """The open subscriptions, and which of them each instance's lines go to."""

    def __init__(self) -> None:
        self._subscriptions: set[LogSubscription] = set()
        self._matching: dict[str, list[LogSubscription]] = {}

    def subscription(self, pattern: str | None, min_rank: int, maxlen: int) -> LogSubscription:
        """A new subscription, not receiving yet: fill it (a tail), then ``add`` it."""
        return LogSubscription(self, pattern, min_rank, maxlen)

    def add(self, subscription: LogSubscription) -> None:
        self._subscriptions.add(subscription)
        self._matching.clear()

    def remove(self, subscription: LogSubscription) -> None:
        self._subscriptions.discard(subscription)
        self._matching.clear()

    def matching(self, fqn: str) -> list[LogSubscription]:
        """The subscriptions that want ``fqn``'s lines (before the level filter)."""
        subs = self._matching.get(fqn)
        if subs is None:
            subs = self._matching[fqn] = [s for s in self._subscriptions if s.matches(fqn)]
        return subs

    def forget(self, fqn: str) -> None:
        self._matching.pop(fqn, None)

    def close_all(self) -> None:
        """End every stream (they deliver what they hold first)."""
        for subscription in list(self._subscriptions):
            subscription.close()

    def __len__(self) -> int:
        return len(self._subscriptions)
