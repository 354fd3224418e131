"""The sources family: list, add, remove, reload, enable, disable, start, stop."""

from __future__ import annotations

from hive_client.protocol import (
    AddSource,
    AddSourceResult,
    DisableSource,
    EnableSource,
    ListSources,
    Ok,
    ReloadPlan,
    ReloadSource,
    RemoveSource,
    SourceList,
    StartSource,
    StopSource,
)

from ..dispatch import RequestContext
from .outcomes import answer


async def list_sources(ctx: RequestContext, request: ListSources) -> SourceList:
    registry = ctx.app.sources
    return SourceList(sources=[registry.info(registry.sources[n]) for n in registry.names()])


async def add_source(ctx: RequestContext, request: AddSource) -> AddSourceResult:
    registry = ctx.app.sources
    source, _created = await registry.add(request.path, request.name, request.owner)
    outcomes = await registry.start(source.name, []) if request.start else []
    return AddSourceResult(name=source.name, services=len(source.services), outcomes=outcomes,
                           warnings=list(source.warnings))


async def remove_source(ctx: RequestContext, request: RemoveSource) -> Ok:
    await ctx.app.sources.remove(request.name)
    return Ok(message=f"source {request.name} removed")


async def reload_source(ctx: RequestContext, request: ReloadSource) -> ReloadPlan:
    return await ctx.app.sources.reload(request.name, dry_run=request.dry_run)


async def enable_source(ctx: RequestContext, request: EnableSource) -> Ok:
    await ctx.app.sources.set_enabled(request.name, True)
    return Ok(message=f"source {request.name} enabled")


async def disable_source(ctx: RequestContext, request: DisableSource) -> Ok:
    await ctx.app.sources.set_enabled(request.name, False)
    return Ok(message=f"source {request.name} disabled")


async def start_source(ctx: RequestContext, request: StartSource) -> Ok:
    registry = ctx.app.sources
    outcomes = await registry.start(request.name, request.services)
    count = len(request.services) or len(registry.get(request.name).services)
    started = f"started {count} service{'s' if count != 1 else ''}"
    return answer(started, outcomes, not_done=f"source {request.name} not started as asked")


async def stop_source(ctx: RequestContext, request: StopSource) -> Ok:
    outcomes = await ctx.app.sources.stop(request.name)
    return answer(f"source {request.name} stopped", outcomes, not_done="not stopped yet")
