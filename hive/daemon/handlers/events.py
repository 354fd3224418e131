"""The events family: ``subscribe_events`` follows the bus live."""

from __future__ import annotations

from hive_client import event_kinds
from hive_client.protocol import EventItem, SubscribeEvents

from ..dispatch import RequestContext, StreamSink, relay
from ..errors import RequestError

_KNOWN_KINDS = frozenset(event_kinds())


async def subscribe_events(ctx: RequestContext, request: SubscribeEvents, sink: StreamSink) -> None:
    unknown = sorted(set(request.kinds) - _KNOWN_KINDS)
    if unknown:
        raise RequestError.invalid(
            f"unknown event kind(s): {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KINDS))}"
        )
    with ctx.app.bus.subscribe(request.kinds, request.fqn, request.since_seq) as subscription:
        await relay(sink, subscription, lambda event: EventItem(stream_id=sink.stream_id, event=event))
