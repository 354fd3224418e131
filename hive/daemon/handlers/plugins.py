"""The plugins family: list them, enable, disable or restart one."""

from __future__ import annotations

import re

import msgspec

from hive_client import PluginNotice
from hive_client.protocol import (
    EmitEvent,
    ListPlugins,
    Ok,
    PluginAction,
    PluginCall,
    PluginDetail,
    PluginList,
    PluginReply,
)

from ..dispatch import RequestContext, may
from ..errors import RequestError


def not_configured(name: str, known: str = "no plugin is configured") -> str:
    return (f"no plugin named {name!r} ({known}); enable one with [plugins.{name}] in config.toml "
            "and `hive reload`")


_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_OK = Ok()
# The bus keeps its last 1024 events for replay: without a bound per event, a client
# sending frame-sized notices would hold gigabytes there.
MAX_EVENT_BYTES = 64 * 1024


async def list_plugins(ctx: RequestContext, request: ListPlugins) -> PluginList:
    plugins = ctx.app.plugins
    return PluginList(plugins=plugins.infos() if plugins is not None else [])


async def plugin_action(ctx: RequestContext, request: PluginAction) -> PluginDetail:
    plugins = ctx.app.plugins
    if plugins is None:
        raise RequestError.not_found(not_configured(request.name))
    return PluginDetail(plugin=await plugins.act(request.name, request.action))


async def emit_event(ctx: RequestContext, request: EmitEvent) -> Ok:
    if not _KIND.match(request.kind):
        raise RequestError.invalid(
            f"invalid event kind {request.kind!r}: lowercase letters, digits, _ . - (64 at most)")
    try:
        size = len(request.message.encode("utf-8", "surrogatepass")) + len(request.fqn or "")
        size += len(msgspec.msgpack.encode(request.data))
    except RecursionError:
        raise RequestError.invalid("event data is nested too deeply") from None
    if size > MAX_EVENT_BYTES:
        raise RequestError.invalid(
            f"event too large: {size} bytes of message, fqn and data (at most {MAX_EVENT_BYTES})")
    sender = ctx.connection.plugin or ctx.connection.label
    ctx.app.bus.publish(PluginNotice(plugin=sender, kind=request.kind, fqn=request.fqn,
                                     message=request.message, data=request.data))
    return _OK


async def plugin_call(ctx: RequestContext, request: PluginCall) -> PluginReply:
    plugins = ctx.app.plugins
    if plugins is None:
        raise RequestError.not_found(not_configured(request.plugin))
    needed = plugins.call_scope(request.plugin, request.command)
    if not may(ctx.connection.scope, needed):
        raise RequestError.forbidden(ctx.connection.label, ctx.connection.scope,
                                     f"plugin_call {request.plugin} {request.command}", needed,
                                     group_member=ctx.connection.plugin is None)
    return PluginReply(result=await plugins.call(request.plugin, request.command, request.args))
