"""The daemon family: ping, status, request_stats, shutdown, reload."""

from __future__ import annotations

import contextlib

from hive_client import ServiceState
from hive_client.protocol import (
    DaemonStatus,
    Ok,
    Ping,
    Pong,
    Reload,
    RequestStats,
    RequestStatsReply,
    Shutdown,
    Status,
)

from ..app import ShutdownRequest
from ..dispatch import RequestContext
from ..dns import DnsCounts
from ..store import StoreError

_PONG = Pong()


async def ping(ctx: RequestContext, request: Ping) -> Pong:
    return _PONG


async def request_stats(ctx: RequestContext, request: RequestStats) -> RequestStatsReply:
    return ctx.app.request_stats.reply()


async def status(ctx: RequestContext, request: Status) -> DaemonStatus:
    app = ctx.app
    writer = app.state_writer
    with contextlib.suppress(StoreError):  # shown below, as state_error
        await app.store.ensure_file()  # a state.db deleted since the last write shows now
    services = app.services.all_records()
    running = sum(
        1 for record in services if record.state in (ServiceState.RUNNING, ServiceState.UNHEALTHY)
    )
    dns = app.proxy.dns if app.proxy is not None else None
    counts = dns.counts if dns is not None else DnsCounts()
    return DaemonStatus(
        running=True,
        pid=app.pid,
        version=app.version,
        source_count=len(app.sources.names()),
        running_services=running,
        total_services=len(services),
        proxy_addresses=app.proxy.addresses if app.proxy is not None else [],
        uptime_secs=int(app.uptime),
        socket=str(app.socket_path),
        home=str(app.home.root),
        started_at=app.started_at,
        clients=len(app.server.connections) if app.server is not None else 0,
        event_seq=app.bus.last_seq,
        state_error=app.store.file_error or writer.last_error,
        state_note=app.store.file_note,
        state_unsaved=writer.unsaved,
        state_failures=writer.failures,
        log_write_errors=app.logs.write_errors,
        log_lines_dropped=app.logs.dropped_lines,
        log_write_error=app.logs.write_error,
        log_subscriptions=app.logs.subscriptions,
        client_backlog_bytes=app.server.budget.held if app.server is not None else 0,
        dns_address=dns.address if dns is not None else None,
        dns_upstream=dns.upstream if dns is not None and (dns.address or dns.error) else None,
        dns_error=dns.error if dns is not None else None,
        dns_answered=counts.answered,
        dns_forwarded=counts.forwarded,
        dns_failed=counts.failed,
        dns_refused=counts.refused,
        dns_dropped=counts.dropped,
        proxy_errors=app.proxy.problems if app.proxy is not None else [],
    )


async def shutdown(ctx: RequestContext, request: Shutdown) -> Ok:
    # Answer first; the lifecycle task carries the shutdown out.
    ctx.app.request_shutdown(
        ShutdownRequest(
            graceful=request.graceful,
            keep_services=request.keep_services,
            reason=f"requested by uid {ctx.connection.peer.uid} (pid {ctx.connection.peer.pid})",
        )
    )
    return Ok(message="shutting down")


async def reload(ctx: RequestContext, request: Reload) -> Ok:
    return Ok(message=await ctx.app.reload())
