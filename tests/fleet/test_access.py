"""`hive fleet grant|revoke|auth enable` through the real CLI, a real daemon and a real
etcd with authentication: what each hive's user may then do, runs that change nothing,
flags that converge, and the errors a user meets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.cli_helpers import hive
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.harness import b64, etcd_call
from tests.support import DaemonProcess, free_port, start_daemon

PREFIX = "/hive/fleet/"


def ok(daemon: DaemonProcess, *args: str) -> Any:
    result = hive(daemon, "fleet", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(daemon: DaemonProcess, *args: str) -> str:
    result = hive(daemon, "fleet", *args)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def token(endpoint: str, user: str, password_file: Path) -> str:
    password = password_file.read_text().splitlines()[0]
    return str(etcd_call(endpoint, "auth/authenticate", {"name": user, "password": password})["token"])


def may_write(endpoint: str, as_user: str, key: str) -> bool:
    """Whether the token's user may put ``key`` under the fleet's prefix."""
    answer = httpx.post(f"{endpoint}/v3/kv/put", json={"key": b64(PREFIX + key), "value": b64("x")},
                        headers={"Authorization": as_user}, timeout=10)
    assert answer.status_code == 200 or "permission denied" in answer.text, answer.text
    return answer.status_code == 200


def test_grant_converges_and_revoke_removes_access(etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet,
                                                   tmp_path: Path) -> None:
    etcd = etcd_cluster(1)
    endpoint = etcd.endpoints[0]
    admin = fleet.start_hive("adm", etcd.endpoints, capacity=0)  # commands go through its fleet plugin
    root = tmp_path / "root.password"
    root.write_text("root-pw\n")
    as_root = ("--root-password-file", str(root))

    enabled = ok(admin, "auth", "enable", *as_root)
    assert enabled["changes"] == ["created user root", "gave role root to root", "turned authentication on"]
    assert enabled["without_user"] == ["adm"]  # registered while authentication was off
    again = hive(admin, "fleet", "auth", "enable", *as_root)
    assert again.returncode == 0 and "authentication was on already" in again.stdout

    # The errors a user meets: each says what to do, and leaves no password file behind.
    password = tmp_path / "h1.password"
    assert "give etcd's root password with --root-password-file" in refused(
        admin, "grant", "h1", "--password-file", str(password))
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    assert "etcd refused the password of its user 'root'" in refused(
        admin, "grant", "h1", "--password-file", str(password), "--root-password-file", str(wrong))
    assert "not etcd's `root`" in refused(admin, "grant", "root", "--password-file", str(password), *as_root)
    assert not password.exists()

    # A new user: its password generated into a 0600 file; it writes its record and nothing else.
    created = ok(admin, "grant", "h1", "--password-file", str(password), *as_root)
    assert (created["user"], created["password"], created["roles"]) == ("created", "set", ["fleet-hive-h1"])
    assert created["password_file"] == str(password) and created["auth"] is True
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    as_h1 = token(endpoint, "h1", password)
    assert may_write(endpoint, as_h1, "hives/h1")
    assert not any(may_write(endpoint, as_h1, key) for key in ("hives/h2", "services/x", "leader", "assign/x/0"))
    assert "may not manage users and roles (it needs etcd's root role)" in refused(
        admin, "revoke", "h2", "--root-user", "h1", "--root-password-file", str(password))

    # Twice: nothing changes (and the password stays the one in the file).
    same = ok(admin, "grant", "h1", "--password-file", str(password), *as_root)
    assert (same["changes"], same["user"], same["password"]) == ([], "kept", "kept")
    text = hive(admin, "fleet", "grant", "h1", "--password-file", str(password), *as_root)
    assert text.returncode == 0 and "hive h1: nothing to change" in text.stdout

    # Other flags converge: roles given, then taken away again.
    both = ok(admin, "grant", "h1", "--scheduler", "--admin", "--password-file", str(password), *as_root)
    assert both["roles"] == ["fleet-admin", "fleet-hive-h1", "fleet-scheduler"]
    assert {"gave role fleet-admin to h1", "gave role fleet-scheduler to h1"} <= set(both["changes"])
    assert may_write(endpoint, as_h1, "services/x") and may_write(endpoint, as_h1, "leader")
    # Taken from the hive that leads placement: the leader key goes too (else, its lease
    # renewed, it would hold it and place nothing).
    as_root_user = token(endpoint, "root", root)
    etcd_call(endpoint, "kv/put", {"key": b64(PREFIX + "leader"), "value": b64("h1")}, as_root_user)
    less = ok(admin, "grant", "h1", "--admin", "--password-file", str(password), *as_root)
    assert less["changes"] == ["took role fleet-scheduler from h1",
                               "h1 led placement: deleted the leader key (another scheduler hive takes it)"]
    assert "kvs" not in etcd_call(endpoint, "kv/range", {"key": b64(PREFIX + "leader")}, as_root_user)
    assert may_write(endpoint, as_h1, "services/x") and not may_write(endpoint, as_h1, "leader")
    assert ok(admin, "grant", "h1", "--admin", "--password-file", str(password), *as_root)["changes"] == []

    # A new password only when asked for.
    fresh = tmp_path / "h1.new-password"
    reset = ok(admin, "grant", "h1", "--admin", "--reset-password", "--password-file", str(fresh), *as_root)
    assert reset["changes"] == ["changed the password of user h1"]
    assert token(endpoint, "h1", fresh)
    with pytest.raises(httpx.HTTPStatusError):
        token(endpoint, "h1", password)

    # Revoked: the user is gone, its token too; twice changes nothing.
    assert ok(admin, "revoke", "h1", *as_root)["changes"] == ["deleted user h1", "deleted role fleet-hive-h1"]
    with pytest.raises(httpx.HTTPStatusError):
        token(endpoint, "h1", fresh)
    with pytest.raises(httpx.HTTPStatusError):
        etcd_call(endpoint, "kv/put", {"key": b64(PREFIX + "hives/h1"), "value": b64("x")}, as_h1)
    assert ok(admin, "revoke", "h1", *as_root)["changes"] == []
    gone = hive(admin, "fleet", "revoke", "h1", *as_root)
    assert gone.returncode == 0 and "hive h1: no user to delete" in gone.stdout


def test_etcd_unreachable_is_a_clear_error(fleet: Fleet, tmp_path: Path) -> None:
    port = free_port()  # nothing listens on it
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[plugins.fleet]\n[plugins.fleet.settings]\nendpoints = ["http://127.0.0.1:{port}"]\nhive_id = "h0"\n')
    daemon = start_daemon(home)
    fleet.daemons["h0"] = daemon
    password = tmp_path / "h1.password"
    message = refused(daemon, "grant", "h1", "--password-file", str(password))
    assert "no etcd member answered" in message and "check that etcd runs" in message, message
    assert not password.exists()


def test_generated_password_file_by_default_in_the_working_directory(
        etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet, tmp_path: Path) -> None:
    etcd = etcd_cluster(1)
    admin = fleet.start_hive("adm", etcd.endpoints, capacity=0)
    env = {"HIVE_HOME": str(admin.home), "HIVE_SOCKET": str(admin.socket)}
    result = subprocess.run([sys.executable, "-m", "hive", "fleet", "grant", "h3"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "etcd's authentication is off" in result.stdout
    assert (tmp_path / "h3.etcd-password").exists() and str(tmp_path / "h3.etcd-password") in result.stdout
