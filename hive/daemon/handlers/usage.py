"""``container_stats``: what container instances use, by their engines' stats.

A container whose processes the host cannot see (no host pid: a remote or VM-backed
engine) has no process tree to read with psutil; its engine counts its CPU and memory.
The engines are asked together, each within :data:`STATS_TIMEOUT`: one that does not
answer leaves its containers out, never the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from hive_client import ContainerUsage
from hive_client.protocol import ContainerStats, ContainerStatsReply

from ..dispatch import RequestContext

__all__ = ["container_stats"]

STATS_TIMEOUT = 5.0  # an engine's one-shot stats answer at once; a busy one, within this

Usage = Callable[[], Awaitable["tuple[float, int] | None"]]


async def container_stats(ctx: RequestContext, request: ContainerStats) -> ContainerStatsReply:
    wanted = set(request.fqns)
    found: list[ContainerUsage] = []

    async def read(fqn: str, usage: Usage) -> None:
        measured = await usage()
        if measured is not None:
            found.append(ContainerUsage(fqn=fqn, cpu_seconds=measured[0], memory_bytes=measured[1]))

    with anyio.move_on_after(STATS_TIMEOUT):
        async with anyio.create_task_group() as reads:
            for instance in ctx.app.services.in_order(None):
                handle = instance.handle
                # Only the engine API's container handles have usage(); a process has a pid.
                usage: Usage | None = getattr(handle, "usage", None)
                if handle is None or handle.pid is not None or usage is None:
                    continue
                if not wanted or instance.fqn in wanted:
                    reads.start_soon(read, instance.fqn, usage)
    return ContainerStatsReply(containers=sorted(found, key=lambda usage: usage.fqn))
