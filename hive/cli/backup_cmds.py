"""`hive backup`: snapshots of sources and services by the backup core plugin."""

from __future__ import annotations

import click

from ._common import CliState, fail, json_option, pass_state, plugin_caller

_call = plugin_caller("backup")


@click.group()
def backup() -> None:
    """Snapshots of the sources and services, and restores (the backup plugin)."""


@backup.command("now")
@json_option
@pass_state
def backup_now(state: CliState) -> None:
    """Take a snapshot now."""
    info = _call(state, "now")
    if state.json_mode:
        state.out.json(info)
        return
    state.out.line(f"backup {info['id']}: {info['sources']} sources, {info['services']} services, "
                   f"{info['size']} bytes")


@backup.command("list")
@json_option
@pass_state
def backup_list(state: CliState) -> None:
    """The snapshots, newest first."""
    found = _call(state, "list")
    if state.json_mode:
        state.out.json(found)
        return
    rows = [[b["id"], str(b.get("reason") or "-"), str(b.get("created") or "-")[:19], str(b.get("sources", "-")),
             str(b.get("services", "-")), str(b["size"]), b.get("error") or ""] for b in found]
    state.out.table(["ID", "REASON", "CREATED", "SOURCES", "SERVICES", "BYTES", ""], rows,
                    empty="no backup yet (`hive backup now` takes one)")


@backup.command("verify")
@click.argument("archive_id", metavar="ID")
@json_option
@pass_state
def backup_verify(state: CliState, archive_id: str) -> None:
    """Check a snapshot's checksums; exit 1 if it is damaged."""
    result = _call(state, "verify", id=archive_id)
    if state.json_mode:
        state.out.json(result)
    elif result["ok"]:
        state.out.line(f"backup {archive_id}: intact")
    if not result["ok"]:
        fail(f"backup {archive_id} is damaged: " + "; ".join(result["problems"]))


@backup.command("restore")
@click.argument("archive_id", metavar="ID")
@click.option("--dry-run", is_flag=True, help="Show the plan only.")
@json_option
@pass_state
def backup_restore(state: CliState, archive_id: str, dry_run: bool) -> None:
    """Put back what a snapshot has and is missing now (a restore adds, never overwrites)."""
    result = _call(state, "restore", id=archive_id, dry_run=dry_run)
    if state.json_mode:
        state.out.json(result)
        return
    if not result["plan"]:
        state.out.line(f"backup {archive_id}: nothing to restore, everything in it is here")
        return
    state.out.line(("plan" if dry_run else "restored") + f" from backup {archive_id}:")
    for step in result["plan"]:
        state.out.line(f"  {step}")
