"""The events family: ``subscribe_events`` follows the bus live."""

from __future__ import annotations

import anyio

from hive_client import event_kinds
from hive_client.protocol import EventItem, StreamLagged, SubscribeEvents

from ..dispatch import RequestContext, StreamSink
from ..errors import RequestError

_KNOWN_KINDS = frozenset(event_kinds())


async def subscribe_events(ctx: RequestContext, request: SubscribeEvents, sink: StreamSink) -> None:
    unknown = sorted(set(request.kinds) - _KNOWN_KINDS)
    if unknown:
        raise RequestError.invalid(
            f"unknown event kind(s): {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KINDS))}"
        )
    with ctx.app.bus.subscribe(request.kinds, request.fqn, request.since_seq) as subscription:
        if not await sink.start():
            return
        while True:
            try:
                event = await subscription.get()
            except anyio.EndOfStream:
                return
            dropped = subscription.take_dropped()
            if dropped and not await sink.send(StreamLagged(stream_id=sink.stream_id, dropped=dropped)):
                return
            if not await sink.send(EventItem(stream_id=sink.stream_id, event=event)):
                return
