"""The services family: list, status, start, stop, restart, create, update, delete."""

from __future__ import annotations

from hive_client import ErrorCode, ExposedInfo, parse_fqn
from hive_client.protocol import (
    BuildService,
    CreateService,
    DeleteService,
    ExposedList,
    GetServiceStatus,
    ListExposed,
    ListServices,
    ListStates,
    Ok,
    RestartService,
    ScaleService,
    ServiceDetail,
    ServiceList,
    ServiceStates,
    StartService,
    StopService,
    UpdateService,
)

from ..dispatch import RequestContext
from ..errors import RequestError
from ..supervision import InstanceRuntime
from .outcomes import answer


def _instance(ctx: RequestContext, fqn: str) -> InstanceRuntime:
    try:
        parsed = parse_fqn(fqn)
    except ValueError as exc:
        raise RequestError(ErrorCode.INVALID_FQN, str(exc)) from None
    supervisor = ctx.app.services
    service = supervisor.get(f"{parsed.source}:{parsed.service}")  # NOT_FOUND names it
    instance = supervisor.find_instance(fqn)
    if instance is None:
        raise RequestError.not_found(f"{service.fqn} has no instance #{parsed.instance} (it runs {service.scale})")
    return instance


def _base_fqn(ctx: RequestContext, fqn: str) -> str:
    return _instance(ctx, fqn).service.fqn


def _listed(ctx: RequestContext, source: str | None) -> list[InstanceRuntime]:
    """The instances of every service (of ``source``), by fqn; NOT_FOUND for an unknown
    source."""
    if source is not None:
        ctx.app.sources.get(source)
    return ctx.app.services.in_order(source)


async def list_services(ctx: RequestContext, request: ListServices) -> ServiceList:
    info = ctx.app.services.info
    return ServiceList(services=[info(instance) for instance in _listed(ctx, request.source)])


async def list_states(ctx: RequestContext, request: ListStates) -> ServiceStates:
    # A ServiceState is a str enum: msgspec writes its value, no str() needed per instance.
    states: dict[str, str] = {instance.fqn: instance.state for instance in _listed(ctx, request.source)}
    return ServiceStates(states=states)


async def get_service_status(ctx: RequestContext, request: GetServiceStatus) -> ServiceDetail:
    return ServiceDetail(service=ctx.app.services.info(_instance(ctx, request.fqn)))


async def start_service(ctx: RequestContext, request: StartService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    ctx.app.sources.require_startable(fqn)
    outcomes = await ctx.app.services.start([fqn])
    return answer(f"{fqn} started", outcomes, not_done=f"{fqn} not started")


async def stop_service(ctx: RequestContext, request: StopService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    outcomes = await ctx.app.services.stop([fqn])
    return answer(f"{fqn} stopped", outcomes, not_done="not stopped yet")


async def restart_service(ctx: RequestContext, request: RestartService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    ctx.app.sources.require_startable(fqn)
    outcomes = await ctx.app.services.restart(fqn)
    failed = any(o.result == "failed" for o in outcomes)
    return answer(f"{fqn} restarted", outcomes, not_done=f"{fqn} not restarted" if failed else "not restarted yet")


async def create_service(ctx: RequestContext, request: CreateService) -> Ok:
    fqn = await ctx.app.sources.create_service(request.source_id, request.name, request.config, request.start)
    return Ok(message=f"{fqn} created" + (" and starting" if request.start else ""))


async def update_service(ctx: RequestContext, request: UpdateService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    await ctx.app.sources.update_service(fqn, request.patch)
    return Ok(message=f"{fqn} updated")


async def delete_service(ctx: RequestContext, request: DeleteService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    await ctx.app.sources.delete_service(fqn)
    return Ok(message=f"{fqn} deleted")


async def scale_service(ctx: RequestContext, request: ScaleService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    if request.instances:
        ctx.app.sources.require_startable(fqn)
    outcomes = await ctx.app.services.scale(fqn, request.instances)
    message = f"{fqn} runs {request.instances} instance{'s' if request.instances != 1 else ''}"
    return answer(message, outcomes, not_done=f"{message}; not running")


async def build_service(ctx: RequestContext, request: BuildService) -> Ok:
    fqn = _base_fqn(ctx, request.fqn)
    return Ok(message=await ctx.app.services.build(fqn))


async def list_exposed(ctx: RequestContext, request: ListExposed) -> ExposedList:
    supervisor = ctx.app.services
    consumers: dict[str, list[str]] = {}
    for service in supervisor.services.values():
        for use in service.config.uses:
            consumers.setdefault(use.name, []).append(service.fqn)
    exposed = []
    for name in sorted(supervisor.exposes):
        provider = supervisor.exposes[name]
        expose = provider.config.expose
        assert expose is not None
        exposed.append(ExposedInfo(
            name=name,
            source=provider.source,
            service=provider.name,
            has_secret=expose.secret is not None,
            vars=sorted(expose.vars),
            consumers=sorted(consumers.get(name, [])),
            healthy=any(i.ready for i in provider.instances),
            port_names=sorted(provider.config.ports()),
        ))
    return ExposedList(exposed=exposed)
