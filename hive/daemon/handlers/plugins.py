"""The plugins family: list them, enable, disable or restart one."""

from __future__ import annotations

from hive_client.protocol import ListPlugins, PluginAction, PluginDetail, PluginList

from ..dispatch import RequestContext
from ..errors import RequestError


async def list_plugins(ctx: RequestContext, request: ListPlugins) -> PluginList:
    plugins = ctx.app.plugins
    return PluginList(plugins=plugins.infos() if plugins is not None else [])


async def plugin_action(ctx: RequestContext, request: PluginAction) -> PluginDetail:
    plugins = ctx.app.plugins
    if plugins is None:
        raise RequestError.not_found(f"no plugin named {request.name!r} (no plugin is configured)")
    return PluginDetail(plugin=await plugins.act(request.name, request.action))
