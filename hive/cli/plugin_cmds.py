"""`hive plugins`: the core plugins, and enable / disable / restart one at run time."""

from __future__ import annotations

import click

from hive_client import PluginInfo

from ._common import CliState, json_option, pass_state

_STATE_STYLE = {"running": "green", "starting": "yellow", "degraded": "yellow", "unhealthy": "red",
                "half_open": "yellow", "disabled": "dim", "failed": "red"}


def _scope(plugin: PluginInfo) -> str:
    # Say when the scope is the plugin's own default: config.toml did not choose it.
    return plugin.scope if plugin.scope_from == "config" else f"{plugin.scope} (plugin default)"


def _state(plugin: PluginInfo) -> str:
    # Why it is not simply running: the line its thread is stuck on, the breaker's next try.
    if plugin.retry_in is not None:
        return f"{plugin.state} (retry in {plugin.retry_in:.0f} s)"
    if str(plugin.state) in ("degraded", "unhealthy") and plugin.reason:
        return f"{plugin.state}: {plugin.reason}"
    return str(plugin.state)


def _rows(plugins: list[PluginInfo]) -> list[list[str]]:
    return [
        [p.name, p.version or "-", _state(p), _scope(p), str(p.delivered), str(p.dropped),
         str(p.failed), p.last_error or "-"]
        for p in plugins
    ]


def _show(state: CliState, plugins: list[PluginInfo]) -> None:
    if state.json_mode:
        state.out.json(plugins)
        return
    state.out.table(
        ["PLUGIN", "VERSION", "STATE", "SCOPE", "EVENTS", "DROPPED", "FAILED", "LAST ERROR"],
        _rows(plugins),
        empty="no core plugin is configured (see [plugins.NAME] in docs/plugins.md)",
    )


@click.group(invoke_without_command=True)
@json_option
@pass_state
@click.pass_context
def plugins(ctx: click.Context, state: CliState) -> None:
    """Core plugins: version, state, events delivered, dropped and failed, last error."""
    if ctx.invoked_subcommand is None:
        _show(state, state.client().list_plugins())


def _action(name: str) -> click.Command:
    @click.command(name, help=f"{name.capitalize()} a plugin without restarting the daemon.")
    @click.argument("plugin")
    @json_option
    @pass_state
    def command(state: CliState, plugin: str) -> None:
        client = state.client()
        info = getattr(client, f"{name}_plugin")(plugin)
        if state.json_mode:
            state.out.json(info)
            return
        state.out.line(f"{info.name}: {info.state}" + (f" ({info.last_error})" if info.last_error
                                                        and str(info.state) == "failed" else ""))

    return command


for _name in ("enable", "disable", "restart"):
    plugins.add_command(_action(_name))


@plugins.command("pin")
@click.argument("plugin")
def pin(plugin: str) -> None:
    """Print the [plugin_trust] entry pinning the installed PLUGIN (computed here, from the
    files of its distribution in this environment: run it where the daemon's Python is)."""
    from hive.entry_points import entry_points
    from hive.plugin_trust import pin_of

    from ._common import fail

    found = {entry.name: entry for entry in entry_points("hive.core_plugins")}
    entry = found.get(plugin)
    if entry is None:
        known = ", ".join(sorted(found)) or "none"
        fail(f"no core plugin named {plugin!r} is installed here (installed: {known})")
    try:
        click.echo(pin_of(entry).toml(), nl=False)
    except OSError as exc:
        fail(f"cannot hash the files of {entry.distribution}: {exc}")
