"""The status view: what the daemon shows of an instance (``hive status``, events).

Status is asked far more often than it changes, so :func:`instance_info` keeps what it
built on the instance (``info_cache``, dropped by ``ServiceRuntime.notify``) and builds
again only after something it shows changed, or the health monitor has new results.
"""

from __future__ import annotations

import time

import msgspec

from hive_client import ServiceInfo

from .runtime import InstanceRuntime

__all__ = ["instance_info"]


def instance_info(instance: InstanceRuntime) -> ServiceInfo:
    """What the daemon shows of ``instance``, its uptime measured now."""
    info = _cached_info(instance)
    if instance.handle is None or instance.started_at is None:
        return info
    uptime = max(0.0, time.monotonic() - instance.started_monotonic)
    return msgspec.structs.replace(info, uptime_secs=round(uptime, 3))


def _cached_info(instance: InstanceRuntime) -> ServiceInfo:
    health_version = instance.health.results_version if instance.health else 0
    cached = instance.info_cache
    if cached is not None and cached[0] == health_version:
        return cached[1]
    service = instance.service
    handle = instance.handle
    info = ServiceInfo(
        fqn=instance.fqn,
        source=service.source,
        name=service.name,
        state=str(instance.state),
        healthy=instance.healthy,
        pid=handle.pid if handle else None,
        container_id=handle.container_id if handle else None,
        started_at=instance.started_at if handle else None,
        ports=dict(instance.ports or {n: p for n, p in service.config.ports().items() if p}),
        restart_count=service.restart_count,
        instance=instance.index if service.scale > 1 or instance.index > 0 else None,
        runner=service.config.runner.type,
        desired=service.desired,
        exit_code=instance.exit_code,
        last_error=instance.last_error,
        health_checks=instance.health.results() if instance.health else [],
        instances=service.scale,
        generation=instance.generation if service.blue_green else None,
        color=instance.color if service.blue_green else None,
    )
    instance.info_cache = (health_version, info)
    return info
