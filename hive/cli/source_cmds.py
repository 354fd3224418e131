"""``hive source …``: the registry of sources."""

from __future__ import annotations

from pathlib import Path

import click

from hive_client import ReloadPlan

from ._common import CliState, fail, json_option, pass_state


def _complete_source(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from hive_client import BlockingClient

    try:
        with BlockingClient(timeout=2) as client:
            return [s.name for s in client.list_sources() if s.name.startswith(incomplete)]
    except Exception:
        return []


@click.group()
def source() -> None:
    """Manage sources: list, add, remove, reload, enable, disable, start, stop."""


@source.command("list")
@json_option
@pass_state
def source_list(state: CliState) -> None:
    """Every source with its type, state and service count."""
    sources = state.client().list_sources()
    if state.json_mode:
        state.out.json(sources)
        return
    rows = [[s.name, s.source_type, s.status, str(s.service_count), "yes" if s.enabled else "no", s.path]
            for s in sources]
    state.out.table(["SOURCE", "TYPE", "STATE", "SERVICES", "ENABLED", "PATH"], rows, state_column=2,
                    empty="no sources (add one with `hive source add PATH` or `hive up PATH`)")
    for s in sources:
        if s.error:
            state.out.line(f"  {s.name}: {s.error}", style="red")


@source.command("add")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Source name (default: the directory name).")
@click.option("--start", is_flag=True, help="Start its services too.")
@json_option
@pass_state
def source_add(state: CliState, path: Path, name: str | None, start: bool) -> None:
    """Add a project directory (hive.yaml) or a SQLite source (.db)."""
    client = state.client()
    if start:
        client.timeout = max(client.timeout or 0, 120)
    result = client.add_source(path.absolute(), name=name, start=start)
    if state.json_mode:
        state.out.json(result)
    else:
        state.out.line(f"source {result.name} added ({result.services} services)")
    failed = [o for o in result.outcomes if o.result == "failed"]
    if failed:
        fail(f"source {result.name} added, but not started as asked: "
             + "; ".join(f"{o.fqn}: {o.reason or o.state}" for o in failed))


def _simple(verb: str, past: str, help_text: str) -> click.Command:
    @click.command(verb, help=help_text)
    @click.argument("name", shell_complete=_complete_source)
    @json_option
    @pass_state
    def command(state: CliState, name: str) -> None:
        client = state.client()
        client.timeout = max(client.timeout or 0, 300)
        getattr(client, f"{verb}_source")(name)
        if state.json_mode:
            state.out.json({past: name})
        else:
            state.out.line(f"source {name} {past}")

    return command


source.add_command(_simple("remove", "removed", "Stop a source's services and forget it."))
source.add_command(_simple("enable", "enabled", "Allow a source's services to start again."))
source.add_command(_simple("disable", "disabled", "Stop a source's services and keep them from starting."))
source.add_command(_simple("stop", "stopped", "Stop every service of a source."))


@source.command("start")
@click.argument("name", shell_complete=_complete_source)
@click.argument("services", nargs=-1)
@json_option
@pass_state
def source_start(state: CliState, name: str, services: tuple[str, ...]) -> None:
    """Start a source's services (all, or the ones named)."""
    client = state.client()
    client.timeout = max(client.timeout or 0, 120)
    client.start_source(name, services)
    if state.json_mode:
        state.out.json({"started": name})
    else:
        state.out.line(f"source {name} started")


def print_plan(state: CliState, plan: ReloadPlan) -> None:
    if state.json_mode:
        state.out.json(plan)
        return
    verb = "reloaded" if plan.applied else "would change (dry run)"
    state.out.line(f"source {plan.name} {verb}:")
    for label, fqns, style in (("start", plan.start, "green"), ("restart", plan.restart, "yellow"),
                               ("stop", plan.stop, "red")):
        for fqn in fqns:
            state.out.line(f"  {label:<8} {fqn}", style=style)
    if not (plan.start or plan.restart or plan.stop):
        state.out.line("  nothing changed", style="dim")
    elif plan.unchanged:
        state.out.line(f"  unchanged: {len(plan.unchanged)}", style="dim")


@source.command("reload")
@click.argument("name", required=False, shell_complete=_complete_source)
@click.option("--dry-run", is_flag=True, help="Show the plan without applying it.")
@json_option
@pass_state
def source_reload(state: CliState, name: str | None, dry_run: bool) -> None:
    """Re-read a source (NAME, a path such as `.`, default: this project): restart only
    what changed, start what is new, stop what is gone."""
    from .service_cmds import source_for

    client = state.client()
    name = source_for(client, name)
    client.timeout = max(client.timeout or 0, 300)
    print_plan(state, client.reload_source(name, dry_run=dry_run))
