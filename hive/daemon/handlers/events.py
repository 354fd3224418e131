"""The events family: ``subscribe_events`` follows the bus live."""

from __future__ import annotations

from hive_client import event_kinds
from hive_client.protocol import EventItem, SubscribeEvents

from ..dispatch import RequestContext, StreamSink, relay
from ..errors import RequestError
from .streams import fqn_pattern

_KNOWN_KINDS = frozenset(event_kinds())


async def subscribe_events(ctx: RequestContext, request: SubscribeEvents, sink: StreamSink) -> None:
    if request.since_seq is not None and request.since_seq < 0:
        # Sequence numbers start at 1: a negative one would count phantom missed events.
        raise RequestError.invalid("since_seq must be 0 or more")
    unknown = sorted(set(request.kinds) - _KNOWN_KINDS)
    if unknown:
        raise RequestError.invalid(
            f"unknown event kind(s): {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KINDS))}"
        )
    pattern = fqn_pattern(request.fqn)
    with ctx.app.bus.subscribe(request.kinds, pattern, request.since_seq) as subscription:
        await relay(sink, subscription, lambda event: EventItem(stream_id=sink.stream_id, event=event))
