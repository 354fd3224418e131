"""Access: who may talk to the daemon, and what a client with the ``read`` scope may do.

Real users: the test creates a group and a member of it (it runs as root in CI), runs a
child as that member speaking JSON lines over the real socket, and checks what the
daemon answered and what happened to the service.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.reliability.report import record
from tests.support import (
    can_create_users,
    pids_of_service,
    run_cli,
    start_daemon,
    temporary_user,
    wait_for,
    write_project,
)

SYSTEM_PYTHON = "/usr/bin/python3"

# The member cannot read the project's virtualenv: the child uses the system Python's
# stdlib only, sends each request as one JSON line and prints each answer line (a request
# with "_until" opens a stream: every line up to the first that holds that text).
CHILD = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(20)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": exc.__class__.__name__}))
    sys.exit(0)
reader = sock.makefile("rb")
for request in sys.argv[2:]:
    wanted = json.loads(request)
    until = wanted.pop("_until", None)  # a stream: read lines until one holds this text
    sock.sendall(json.dumps(wanted).encode() + b"\\n")
    while True:
        line = reader.readline()
        if not line:
            print(json.dumps({"closed": True}))
            sys.exit(0)
        print(line.decode().strip())
        if until is None or until in line.decode():
            break
"""


def _need_root() -> None:
    why = can_create_users()
    if why is not None:
        pytest.skip(why)
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a child as another user")


class Member(NamedTuple):
    user: pwd.struct_passwd
    group: str  # its only group, the daemon's allowed_group in these tests


@pytest.fixture(scope="module")
def member() -> Iterator[Member]:
    """A user whose only group is made for it, both removed again afterwards."""
    _need_root()
    with temporary_user() as (user, group):
        yield Member(user, group)


def _as_user(user: pwd.struct_passwd, socket_path: Path, *requests: dict[str, object]) -> list[dict[str, Any]]:
    """Send ``requests`` over one connection as ``user``; the answers, one per request."""

    def demote() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", CHILD, str(socket_path), *(json.dumps(r) for r in requests)],
        capture_output=True, text=True, timeout=60, preexec_fn=demote, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _project(home: Path) -> Path:
    return write_project(home / "proj", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)


@pytest.mark.parametrize("scope", ["read", "operate"])
def test_a_group_member_gets_the_group_scope(member: Member, hive_env: Path, scope: str) -> None:
    (hive_env / "config.toml").write_text(f'[daemon]\nallowed_group = "{member.group}"\ngroup_scope = "{scope}"\n')
    project = _project(hive_env)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        before = wait_for(lambda: pids_of_service("proj:web"), timeout=30, what="proj:web running")
        answers = _as_user(
            member.user, daemon.socket,
            {"type": "status"},
            {"type": "list_services"},
            {"type": "stop_service", "fqn": "proj:web"},
            {"type": "shutdown", "graceful": True, "keep_services": False},
        )
        status, listed, stop, shutdown = answers
        assert status["type"] == "status" and status["pid"] == daemon.pid
        assert [s["fqn"] for s in listed["services"]] == ["proj:web"]
        # Shutting the daemon down stays the owner's (and root's), whatever the group's scope.
        assert shutdown["type"] == "error" and shutdown["code"] == "FORBIDDEN"
        assert f"uid {member.user.pw_uid} has the '{scope}' scope; shutdown needs 'admin'" in shutdown["message"]
        assert "daemon.group_scope" in shutdown["message"]
        if scope == "read":
            assert stop["type"] == "error" and stop["code"] == "FORBIDDEN", stop
            assert "'read' scope; stop_service needs 'operate'" in stop["message"]
            assert pids_of_service("proj:web") == before  # the same process, still running
            record("access", "a group member with the read scope asks to stop a service and shut down",
                   "4 requests", "reads answered; stop and shutdown FORBIDDEN; the service kept its pid")
        else:
            assert stop["type"] == "ok", stop
            wait_for(lambda: not pids_of_service("proj:web"), timeout=30, what="proj:web stopped")
        # The home is enterable for the socket, its files are not readable.
        assert not _can_read(member.user, hive_env / "state.db")
        assert not _can_read(member.user, hive_env / "config.toml")
        assert daemon.alive()
    finally:
        daemon.stop()


def _can_read(user: pwd.struct_passwd, path: Path) -> bool:
    def demote() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    result = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; open(sys.argv[1], 'rb').read(1)", str(path)],
                            capture_output=True, preexec_fn=demote, cwd="/", env={"PATH": "/usr/bin:/bin"},
                            timeout=30, check=False)
    return result.returncode == 0


def test_a_uid_outside_the_group_is_refused(member: Member, hive_env: Path) -> None:
    """Even with the socket opened to everyone, SO_PEERCRED keeps a non-member out."""
    (hive_env / "config.toml").write_text(f'[daemon]\nallowed_group = "{member.group}"\ngroup_scope = "read"\n')
    daemon = start_daemon(hive_env)
    try:
        outsider = pwd.getpwnam("nobody")
        # Through the file system first: the home is 0710 for the group only.
        assert _as_user(outsider, daemon.socket, {"type": "ping"}) == [{"connect_error": "PermissionError"}]
        hive_env.chmod(0o711)
        daemon.socket.chmod(0o666)
        (answer,) = _as_user(outsider, daemon.socket, {"type": "ping"})
        assert answer["type"] == "error" and answer["code"] == "PERMISSION_DENIED"
        assert f"uid {outsider.pw_uid} may not use this daemon" in answer["message"]
        # The member still gets in, and the daemon serves on.
        (pong,) = _as_user(member.user, daemon.socket, {"type": "ping"})
        assert pong == {"type": "pong"}
        assert daemon.alive()
        record("access", "a uid outside the allowed group connects (socket 0666)", "2 connections",
               "EACCES by the file system, then PERMISSION_DENIED by SO_PEERCRED")
    finally:
        daemon.stop()


def test_operate_runs_what_is_configured_and_nothing_new(member: Member, hive_env: Path) -> None:
    """``operate`` starts, stops, restarts and scales; adding a source, creating a service,
    reloading a source and a plugin command that writes files need ``admin``."""
    (hive_env / "config.toml").write_text(
        f'[daemon]\nallowed_group = "{member.group}"\ngroup_scope = "operate"\n[plugins.backup]\n')
    project = _project(hive_env)
    # What a member would add: a project whose service runs as the daemon's user.
    theirs = write_project(hive_env / "theirs", """
        version: "1"
        services:
          evil:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)
    daemon = start_daemon(hive_env)
    try:
        assert run_cli("up", str(project)).returncode == 0
        wait_for(lambda: pids_of_service("proj:web"), timeout=30, what="proj:web running")
        backups = hive_env / "backups"
        answers = _as_user(
            member.user, daemon.socket,
            {"type": "add_source", "path": str(theirs), "start": True},
            {"type": "create_service", "source_id": "proj", "name": "evil",
             "config": {"runner": {"type": "script", "script": {"run": "exec sleep 1000"}}}},
            {"type": "reload_source", "name": "proj"},
            {"type": "plugin_call", "plugin": "backup", "command": "now"},
            {"type": "plugin_call", "plugin": "backup", "command": "list"},
            {"type": "restart_service", "fqn": "proj:web"},
            {"type": "scale_service", "fqn": "proj:web", "instances": 2},
        )
        add, create, reload, backup_now, backup_list, restart, scale = answers
        for answer, what in ((add, "add_source"), (create, "create_service"), (reload, "reload_source"),
                             (backup_now, "plugin_call backup now")):
            assert answer["type"] == "error" and answer["code"] == "FORBIDDEN", (what, answer)
            assert f"uid {member.user.pw_uid} has the 'operate' scope; {what} needs 'admin'" in answer["message"]
        assert backup_list["type"] == "plugin_reply", backup_list
        assert restart["type"] != "error", restart
        assert scale["type"] != "error", scale
        wait_for(lambda: len(pids_of_service("proj:web")) == 2, timeout=30, what="proj:web scaled to 2")
        sources = json.loads(run_cli("source", "list", "--json").stdout)
        assert [s["name"] for s in sources] == ["proj"]
        assert not pids_of_service("theirs:evil") and not pids_of_service("proj:evil")
        assert not list(backups.glob("*.tar.gz"))
        assert daemon.alive()
        record("access", "an operate-scope member adds a source, creates a service, reloads, backs up",
               "4 requests", "each FORBIDDEN (needs admin); restart and scale answered")
    finally:
        daemon.stop()


def test_a_supplementary_member_is_known_by_the_user_database(hive_env: Path) -> None:
    """Membership comes from the uid's group list, not from /proc/PID/status (hidden by
    the unit's ProtectProc=invisible, and stale for a session older than ``usermod -aG``):
    a member whose process does not carry the group still gets in."""
    _need_root()
    with temporary_user(supplementary=True) as (supp, group):
        (hive_env / "config.toml").write_text(f'[daemon]\nallowed_group = "{group}"\ngroup_scope = "read"\n')
        daemon = start_daemon(hive_env)
        try:
            hive_env.chmod(0o711)  # the file system is not what is tested here
            daemon.socket.chmod(0o666)
            # _as_user drops supplementary groups: the process does not show the group.
            (pong,) = _as_user(supp, daemon.socket, {"type": "ping"})
            assert pong == {"type": "pong"}, pong
            assert daemon.alive()
        finally:
            daemon.stop()


def test_a_secret_from_the_daemons_environment_stays_hidden(member: Member, hive_env: Path) -> None:
    """A value the configuration takes from the daemon's environment (``${env.X}``) is shown
    as ``${env.X}`` in what a client receives: a start error, a health check, a failed
    reload's error and event, the daemon's notes in the service's log. Fields that name
    things stay as they are (a home directory, a level equal to a value), and an admin
    gets the values."""
    import secrets

    token = f"tok-{secrets.token_hex(12)}"
    (hive_env / "config.toml").write_text(f'[daemon]\nallowed_group = "{member.group}"\ngroup_scope = "read"\n')
    services = """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000", working_dir: "/nonexistent/${env.HIVE_TEST_TOKEN}"}}
          api:
            runner: {type: script, script: {run: "echo ${env.HIVE_TEST_LEVEL} in ${env.HIVE_TEST_HOME}; exec sleep 1000"}}
            healthcheck: {type: cmd, cmd: {command: "test x = ${env.HIVE_TEST_TOKEN}", interval: INTERVAL}}
        """
    project = write_project(hive_env / "proj", services.replace("INTERVAL", "1s"))
    daemon = start_daemon(hive_env, env={"HIVE_TEST_TOKEN": token, "HIVE_TEST_LEVEL": "debug",
                                         "HIVE_TEST_HOME": str(hive_env)})
    try:
        run_cli("up", str(project))  # proj:web cannot start: its working directory is missing

        def api_unhealthy() -> bool:
            listed = json.loads(run_cli("services", "--json").stdout)
            return any(s["fqn"] == "proj:api" and s["healthy"] is False for s in listed)

        wait_for(api_unhealthy, timeout=30, what="proj:api's check failed")
        # A reload that fails on the value: its error and its event would quote it.
        write_project(project, services.replace("INTERVAL", "\"${env.HIVE_TEST_TOKEN}\""))
        reload = run_cli("source", "reload", "proj")
        assert reload.returncode != 0
        assert token not in reload.stdout + reload.stderr
        answers = _as_user(
            member.user, daemon.socket,
            {"type": "list_services"},
            {"type": "get_service_status", "fqn": "proj:web"},
            {"type": "get_logs", "fqn": "proj:web"},
            {"type": "list_sources"},
            {"type": "subscribe_events", "kinds": [], "since_seq": 0, "_until": "reload_failed"},
            {"type": "status"},
            {"type": "get_logs", "fqn": "proj:api"},
        )
        seen = json.dumps(answers)
        assert token not in seen, seen[max(0, seen.find(token) - 300):seen.find(token) + 100]
        [status] = [answer for answer in answers if answer.get("type") == "status"]
        assert status["home"] == str(hive_env)  # a path, not "${env.HIVE_TEST_HOME}"
        api_logs = answers[-1]["logs"]
        levels = {line["level"] for line in api_logs}
        assert levels and levels <= {"trace", "debug", "info", "notice", "warn", "error", "fatal"}, levels
        assert any(line["message"] == "${env.HIVE_TEST_LEVEL} in ${env.HIVE_TEST_HOME}" for line in api_logs)
        admin = json.loads(run_cli("service", "status", "proj:web", "--json").stdout)
        assert token in json.dumps(admin), admin  # an admin gets the values
        web = answers[1]["service"]
        assert web["last_error"].endswith("working directory /nonexistent/${env.HIVE_TEST_TOKEN} does not exist")
        assert "cmd: test x = ${env.HIVE_TEST_TOKEN}" in seen  # the check's target, in list_services
        assert "interval: invalid duration '${env.HIVE_TEST_TOKEN}'" in seen  # the reload_failed event
        assert daemon.alive()
        record("access", "a secret from the daemon's environment (${env.X}), read by a read-scope member",
               "5 requests", "shown as ${env.X} in last_error, health checks, logs, events; never the value")
    finally:
        daemon.stop()
