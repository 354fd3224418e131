"""The event bus: every event gets a daemon-wide sequence number and a timestamp.

Subscribers each get a bounded queue (a DropOldestQueue) that drops its oldest events
when the reader falls behind, and counts them, so one slow subscriber never slows the
publisher or the others. A recent history lets a subscriber replay from the sequence
number it last saw.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from hive_client import DaemonEvent, Event, fqn_matches

from .drop_oldest_queue import DropOldestQueue

__all__ = ["EventBus", "Subscription"]


class Subscription(DropOldestQueue[DaemonEvent]):
    """One subscriber's feed: the events it asked for, drop-oldest past ``maxlen``."""

    def __init__(
        self,
        bus: EventBus,
        kinds: frozenset[str],
        fqn_pattern: str | None,
        maxlen: int,
    ) -> None:
        super().__init__(maxlen)
        self._bus = bus
        self.kinds = kinds
        self.fqn_pattern = fqn_pattern

    def wants(self, event: Event) -> bool:
        if self.kinds and event.__struct_config__.tag not in self.kinds:
            return False
        if self.fqn_pattern:
            fqn = getattr(event, "fqn", None)
            return fqn is not None and fqn_matches(self.fqn_pattern, fqn)
        return True

    def close(self) -> None:
        super().close()
        self._bus._subscriptions.discard(self)


class EventBus:
    def __init__(self, history: int = 1024) -> None:
        self._seq = 0
        self._history: deque[DaemonEvent] = deque(maxlen=history)
        self._subscriptions: set[Subscription] = set()

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, event: DaemonEvent) -> DaemonEvent:
        self._seq += 1
        event.seq = self._seq
        event.timestamp = datetime.now(UTC)
        self._history.append(event)
        for subscription in self._subscriptions:
            if subscription.wants(event):
                subscription.offer(event)
        return event

    def close(self) -> None:
        """End every subscription once it has delivered what it holds (shutdown)."""
        for subscription in list(self._subscriptions):
            subscription.close()

    def subscribe(
        self,
        kinds: Iterable[str] = (),
        fqn_pattern: str | None = None,
        since_seq: int | None = None,
        maxlen: int = 1024,
    ) -> Subscription:
        """A new subscription; with ``since_seq``, the retained events after it first.

        If the history no longer reaches back to ``since_seq``, the gap is counted as
        dropped so the subscriber knows it missed events.
        """
        subscription = Subscription(self, frozenset(kinds), fqn_pattern, maxlen)
        if since_seq is not None and since_seq < self._seq:
            oldest = self._history[0].seq if self._history else self._seq + 1
            if oldest > since_seq + 1:
                subscription.dropped += oldest - since_seq - 1
            for event in self._history:
                if event.seq > since_seq and subscription.wants(event):
                    subscription.offer(event)
        self._subscriptions.add(subscription)
        return subscription
