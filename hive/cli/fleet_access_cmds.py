"""`hive fleet grant|revoke|auth enable`: etcd's users and roles for the fleet's hives.

The fleet plugin of the daemon this CLI talks to does the work (it has the fleet's
endpoints and TLS); etcd's root password crosses the daemon's Unix socket, to an admin
connection. A hive's password stays on this machine's disk: read from, or generated
into, a file of mode 0600 that the hive's ``password_file`` setting then names.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import click

from ._common import CliState, fail, json_option, pass_state, plugin_caller

__all__ = ["auth", "fleet_grant", "fleet_revoke"]

_call = plugin_caller("fleet")


def _first_line(path: Path, what: str) -> str:
    try:
        with path.open(encoding="utf-8") as file:
            line = file.readline().rstrip("\r\n")
    except OSError as exc:
        fail(f"{path}: cannot read {what}: {exc.strerror or exc}")
    if not line:
        fail(f"{path}: its first line is empty; it should hold {what}")
    return line


def root_options(command: Any) -> Any:
    command = click.option("--root-password-file", type=click.Path(path_type=Path),
                           help="A file whose first line is etcd's root password "
                                "(needed once etcd's authentication is on).")(command)
    return click.option("--root-user", default="root", show_default=True,
                        help="etcd's user with the root role.")(command)


def _root(root_user: str, root_password_file: Path | None) -> dict[str, str]:
    password = _first_line(root_password_file, "etcd's root password") if root_password_file else ""
    return {"root_user": root_user, "root_password": password}


def _new_password_file(path: Path) -> str:
    """A generated password, written to ``path`` (created, mode 0600) before etcd gets it:
    a password etcd has is never one nobody has written down."""
    password = secrets.token_urlsafe(24)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"{path}: cannot create the password file: {exc.strerror or exc}")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(password + "\n")
    return password


def _report(state: CliState, result: dict[str, Any], done: str, *, nothing: str) -> None:
    for change in result["changes"]:
        state.out.line(f"  {change}")
    if not result["changes"]:
        state.out.line(nothing, style="green")
    else:
        state.out.line(done, style="green")
    if not result["auth"]:
        state.out.line("etcd's authentication is off: nobody is refused anything until "
                       "`hive fleet auth enable --root-password-file FILE`", style="yellow")


@click.command("grant")
@click.argument("hive_id")
@click.option("--scheduler", is_flag=True, help="It may lead placement (role fleet-scheduler).")
@click.option("--admin", is_flag=True,
              help="It takes `hive fleet apply|delete|rebalance` and places signaling spawns (role fleet-admin).")
@click.option("--password-file", type=click.Path(path_type=Path),
              help="The hive's password: this file's first line; a file that does not exist is created "
                   "with a generated one (mode 0600). Default: ./HIVE_ID.etcd-password.")
@click.option("--reset-password", is_flag=True, help="Set the password of a user that exists already.")
@root_options
@json_option
@pass_state
def fleet_grant(state: CliState, hive_id: str, scheduler: bool, admin: bool, password_file: Path | None,
                reset_password: bool, root_user: str, root_password_file: Path | None) -> None:
    """Give HIVE_ID its etcd user and roles (run it again to change them).

    The user writes only the hive's own record; --scheduler and --admin add the shared
    roles, and a run without them takes those roles away. Nothing else is touched."""
    path = password_file or Path(f"{hive_id}.etcd-password")
    generated = not path.exists()
    password = _new_password_file(path) if generated else _first_line(path, f"{hive_id}'s password")
    used = False
    try:
        result = _call(state, "grant", hive_id=hive_id, scheduler=scheduler, admin=admin, password=password,
                       reset_password=reset_password, **_root(root_user, root_password_file))
        used = result["password"] == "set"
    finally:
        if generated and not used:
            path.unlink(missing_ok=True)  # etcd did not take it: no file that looks like its password
    result["password_file"] = str(path.resolve()) if used else None
    if state.json_mode:
        state.out.json(result)
        return
    state.out.line(f"hive {hive_id}: user {result['user']}, roles {', '.join(result['roles'])}")
    _report(state, result, f"hive {hive_id} is set up", nothing=f"hive {hive_id}: nothing to change")
    if used:
        how = "written to (mode 0600)" if generated else "set from"
        state.out.line(f"its password: {how} {result['password_file']}; on hive {hive_id}, set "
                       f'username = "{hive_id}" and password_file = "{result["password_file"]}" '
                       "in [plugins.fleet.settings]")


@click.command("revoke")
@click.argument("hive_id")
@root_options
@json_option
@pass_state
def fleet_revoke(state: CliState, hive_id: str, root_user: str, root_password_file: Path | None) -> None:
    """Delete HIVE_ID's etcd user and its own role: the hive is refused from then on."""
    result = _call(state, "revoke", hive_id=hive_id, **_root(root_user, root_password_file))
    if state.json_mode:
        state.out.json(result)
        return
    _report(state, result, f"hive {hive_id} has no access any more", nothing=f"hive {hive_id}: no user to delete")
    if result["still_running"]:
        state.out.line(f"hive {hive_id} keeps its lease while it runs {', '.join(result['still_running'])} "
                       "(etcd 3.4 renews it without checking its user; revoking it now could run them twice): "
                       f"once they have stopped there, `hive fleet revoke {hive_id}` again revokes it",
                       style="yellow")


@click.group()
def auth() -> None:
    """etcd's authentication."""


@auth.command("enable")
@click.option("--root-password-file", type=click.Path(path_type=Path), required=True,
              help="A file whose first line is the password of etcd's user root (created if missing).")
@json_option
@pass_state
def auth_enable(state: CliState, root_password_file: Path) -> None:
    """Turn etcd's authentication on, with its user root (created if missing).

    Give each hive its user first (`hive fleet grant`): a hive without one is refused."""
    result = _call(state, "auth-enable", **_root("root", root_password_file))
    if state.json_mode:
        state.out.json(result)
        return
    _report(state, result, "etcd's authentication is on", nothing="etcd's authentication was on already")
    if result["without_user"]:
        state.out.line(f"hives without an etcd user, refused from now on: {', '.join(result['without_user'])} "
                       "(`hive fleet grant HIVE_ID` gives one; `hive fleet revoke HIVE_ID` takes one out, "
                       "lease included)", style="yellow")
