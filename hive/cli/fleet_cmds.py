"""`hive fleet`: the fleet of hives kept in etcd, through the fleet core plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import CliState, fail, json_option, pass_state, plugin_caller
from .fleet_access_cmds import auth, fleet_grant, fleet_revoke

_call = plugin_caller("fleet")


def read_fleet_services(path: Path) -> list[dict[str, Any]]:
    """The services of a hive.yaml that carry a ``fleet:`` block, as the plugin takes them."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        fail(f"{path}: cannot read it: {exc.strerror or exc}")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        fail(f"{where}: not valid YAML: {exc.problem or exc}")
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid YAML: {exc}")
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        fail(f"{path}: no `services:` table", hint="a hive.yaml lists its services under `services:`")
    found = []
    for name, table in services.items():
        if not isinstance(table, dict) or "fleet" not in table:
            continue
        config = dict(table)
        block = config.pop("fleet") or {}
        if not isinstance(block, dict):
            fail(f"{path}: services.{name}.fleet must be a table of replicas, labels, spread")
        found.append({"name": str(name), "config": config, **block})
    if not found:
        fail(f"{path}: no service has a `fleet:` block",
             hint="add `fleet: {replicas: 2}` to each service the fleet should place")
    return found


@click.group()
def fleet() -> None:
    """Many hives as one, on etcd (the fleet plugin)."""


for _command in (fleet_grant, fleet_revoke, auth):  # etcd's users and roles for the hives
    fleet.add_command(_command)


@fleet.command("apply")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@pass_state
def fleet_apply(state: CliState, file: Path) -> None:
    """Put the services of FILE that carry a `fleet:` block into the fleet."""
    result = _call(state, "apply", services=read_fleet_services(file))
    if state.json_mode:
        state.out.json(result)
        return
    state.out.line(f"applied {len(result['applied'])} fleet services: {', '.join(result['applied'])}")


def _placed(status: dict[str, Any]) -> dict[str, list[str]]:
    """Service -> the hives its instances are assigned to."""
    placed: dict[str, list[str]] = {}
    for instance, where in status["assignments"].items():
        placed.setdefault(instance.rpartition("-")[0], []).append(where["hive_id"])
    return placed


@fleet.command("status")
@json_option
@pass_state
def fleet_status(state: CliState) -> None:
    """This hive in the fleet, and the fleet at a glance."""
    status = _call(state, "status")
    if state.json_mode:
        state.out.json(status)
        return
    wanted = sum(service["replicas"] for service in status["services"].values())
    state.out.line(f"hive      {status['hive_id']} (lease {status['lease']:x}"
                   + (", FENCED: its fleet instances are stopped)" if status["fenced"] else ")"))
    state.out.line(f"leader    {status['leader'] or '-'}")
    state.out.line(f"hives     {len(status['hives'])}")
    state.out.line(f"instances {len(status['assignments'])} placed of {wanted} wanted, "
                   f"{len(status['running_here'])} here")
    for what, problem in status.get("problems", {}).items():
        state.out.line(f"problem   {what}: {problem['error']} ({problem['failures']} tries)", style="yellow")


@fleet.command("hives")
@json_option
@pass_state
def fleet_hives(state: CliState) -> None:
    """The hives in the fleet: capacity, load, runners, labels."""
    status = _call(state, "status")
    load: dict[str, int] = {}
    for where in status["assignments"].values():
        load[where["hive_id"]] = load.get(where["hive_id"], 0) + 1
    if state.json_mode:
        state.out.json([{**hive, "instances": load.get(name, 0)} for name, hive in sorted(status["hives"].items())])
        return
    rows = [[name, f"{load.get(name, 0)}/{hive['capacity']}", ",".join(hive["runners"]),
             ",".join(f"{k}={v}" for k, v in sorted(hive["labels"].items())) or "-",
             "leader" if name == status["leader"] else ("yes" if hive["scheduler"] else "no")]
            for name, hive in sorted(status["hives"].items())]
    state.out.table(["HIVE", "INSTANCES", "RUNNERS", "LABELS", "SCHEDULER"], rows,
                    empty="no hive registered (is etcd reachable? see `hive fleet status`)")


@fleet.command("services")
@json_option
@pass_state
def fleet_services(state: CliState) -> None:
    """The fleet's services: wanted and placed instances, and where."""
    status = _call(state, "status")
    placed = _placed(status)
    if state.json_mode:
        state.out.json([{**service, "placed": sorted(placed.get(name, []))}
                        for name, service in sorted(status["services"].items())])
        return
    rows = [[name, f"{len(placed.get(name, []))}/{service['replicas']}", service["config"]["runner"]["type"],
             ",".join(f"{k}={v}" for k, v in sorted(service["labels"].items())) or "-",
             ",".join(sorted(placed.get(name, []))) or "-"]
            for name, service in sorted(status["services"].items())]
    state.out.table(["SERVICE", "PLACED", "RUNNER", "LABELS", "HIVES"], rows,
                    empty="no fleet service (`hive fleet apply hive.yaml` adds them)")


@fleet.command("delete")
@click.argument("names", nargs=-1, required=True)
@json_option
@pass_state
def fleet_delete(state: CliState, names: tuple[str, ...]) -> None:
    """Remove fleet services (all of NAMES, or none): each hive stops their instances."""
    deleted = _call(state, "delete", names=list(names))["deleted"]
    if state.json_mode:
        state.out.json({"deleted": deleted})
        return
    state.out.line(f"deleted {len(deleted)} fleet services: {', '.join(deleted)} (their instances stop)")


@fleet.command("rebalance")
@click.argument("service", required=False)
@json_option
@pass_state
def fleet_rebalance(state: CliState, service: str | None) -> None:
    """Even out the fleet (or one SERVICE): spread first, then each hive's load.

    A moved instance stops on its hive before it starts on the new one."""
    result = _call(state, "rebalance", **({"service": service} if service else {}))
    if state.json_mode:
        state.out.json(result)
        return
    if not result["moves"]:
        state.out.line("the fleet is balanced: nothing to move")
        return
    state.out.table(["INSTANCE", "FROM", "TO"], [[m["instance"], m["from"], m["to"]] for m in result["moves"]])

