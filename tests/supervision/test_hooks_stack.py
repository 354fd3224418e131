"""Hooks and builds run by the daemon around real services (hive.yaml §9, §13)."""

from __future__ import annotations

from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient, DaemonError, ErrorCode
from tests.supervision.conftest import Events
from tests.support import free_port, run_cli, wait_until, write_project

pytestmark = pytest.mark.anyio


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

EVENTS = ("pre-up", "post-up", "pre-down", "post-down")


def _record(what: str) -> str:
    return f'{{run: \'echo "{what}" >> "$ORDER"\'}}'


def _hooks(indent: str, who: str) -> str:
    lines = [f"{indent}hooks:"]
    lines += [f"{indent}  {event}: [{_record(f'{event} {who}')}]" for event in EVENTS]
    return "\n".join(lines)


def _service(name: str, depends_on: str | None) -> str:
    # The service records its own start and the SIGTERM it gets, so the hooks can be
    # placed against them.
    run = (f"trap 'echo \"stop {name}\" >> \"$ORDER\"; exit 0' TERM; "
           f"echo \"run {name}\" >> \"$ORDER\"; sleep 1000 & wait")
    deps = f"\n    depends_on: [{depends_on}]" if depends_on else ""
    # Healthy once it has recorded its start: post-up (and dependents) wait for that.
    check = f'grep -qx "run {name}" "$ORDER"'
    return (f"  {name}:\n    runner: {{type: script, script: {{run: {_quote(run)}}}}}{deps}\n"
            f"    healthcheck: {{type: cmd, cmd: {{command: {_quote(check)}, interval: 50ms}}}}\n"
            f"    rollout: {{type: recreate, recreate: {{ports: {{}}}}}}\n"
            f"{_hooks('    ', name)}\n")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_order(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_hook_order_of_a_three_service_stack(client: DaemonClient, project_dir: Path) -> None:
    order = project_dir / "order.log"
    text = (
        'version: "1"\n'
        f"environment: {{static: {{ORDER: {_quote(str(order))}}}}}\n"
        f"{_hooks('', 'global')}\n"
        "services:\n"
        + _service("db", None) + _service("api", "db") + _service("worker", "api")
    )
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "hive.yaml").write_text(text)

    await client.add_source(project_dir, name="p", start=True)
    up = _read_order(order)
    assert up == [
        "pre-up global",
        "pre-up db", "run db", "post-up db",
        "pre-up api", "run api", "post-up api",
        "pre-up worker", "run worker", "post-up worker",
        "post-up global",
    ]

    await client.stop_source("p")
    down = _read_order(order)[len(up):]
    assert down == [
        "pre-down global",
        "pre-down worker", "stop worker", "post-down worker",
        "pre-down api", "stop api", "post-down api",
        "pre-down db", "stop db", "post-down db",
        "post-down global",
    ]

    # Hook output is in the logs, marked as such: the service's, and the source's own.
    service_lines = [(line.stream, line.message) for line in await client.get_logs("p:db")]
    assert any(stream == "hook" and "pre-up hook" in message for stream, message in service_lines), service_lines
    global_lines = [(line.stream, line.message) for line in await client.get_logs("p:@hooks")]
    assert any(stream == "hook" and "global" in message for stream, message in global_lines), global_lines


async def test_hive_variables_reach_the_hooks(client: DaemonClient, project_dir: Path) -> None:
    port = free_port()
    write_project(project_dir, f"""
        version: "1"
        services:
          web:
            runner: {{type: script, script: {{run: "sleep 1000"}}}}
            rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
            hooks:
              pre-up:
                - run: 'env > hook-env'
                  environment: {{STEP_VAR: "from the step"}}
    """)
    await client.add_source(project_dir, name="p", start=True)
    env = dict(line.split("=", 1) for line in (project_dir / "hook-env").read_text().splitlines() if "=" in line)
    assert env["HIVE_HOOK_EVENT"] == "pre-up"
    assert env["HIVE_SOURCE_NAME"] == "p"
    assert env["HIVE_SERVICE_NAME"] == "web"
    assert env["HIVE_SERVICE_FQN"] == "p:web"
    assert env["HIVE_ROLLOUT_TYPE"] == "recreate"
    assert "HIVE_ROLLOUT_COLOR" in env
    assert env["HIVE_PORT_HTTP"] == str(port)
    assert env["STEP_VAR"] == "from the step"


async def test_failing_pre_up_keeps_the_service_from_starting(client: DaemonClient, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "touch started; exec sleep 1000"}}
            hooks:
              pre-up:
                - run: "echo checking the schema; exit 3"
    """)
    await client.add_source(project_dir, name="p", start=True)
    info = await client.get_service_status("p:web")
    assert info.state == "crashed"
    assert "pre-up hook failed" in (info.last_error or "")
    assert "exit code 3" in (info.last_error or "") or "code 3" in (info.last_error or "")
    assert not (project_dir / "started").exists()
    messages = [line.message for line in await client.get_logs("p:web")]
    assert any("checking the schema" in m for m in messages)


async def test_warn_logs_and_goes_on(client: DaemonClient, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            hooks:
              pre-up:
                - {run: "exit 1", on_failure: warn}
    """)
    await client.add_source(project_dir, name="p", start=True)
    info = await client.get_service_status("p:web")
    assert info.state == "running"
    messages = [line.message for line in await client.get_logs("p:web")]
    assert any("exit code 1" in m or "code 1" in m for m in messages), messages


async def test_retry_until_it_succeeds(client: DaemonClient, project_dir: Path) -> None:
    # Fails on the first two attempts, succeeds on the third.
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            hooks:
              pre-up:
                - run: 'echo x >> attempts; [ "$(wc -l < attempts)" -ge 3 ]'
                  on_failure: retry
                  retries: 3
                  retry_delay: 100ms
    """)
    await client.add_source(project_dir, name="p", start=True)
    assert (await client.get_service_status("p:web")).state == "running"
    assert len((project_dir / "attempts").read_text().splitlines()) == 3


async def test_retry_gives_up_after_retries_plus_one(client: DaemonClient, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            hooks:
              pre-up:
                - {run: "echo x >> attempts; exit 1", on_failure: retry, retries: 2, retry_delay: 50ms}
    """)
    await client.add_source(project_dir, name="p", start=True)
    info = await client.get_service_status("p:web")
    assert info.state == "crashed"
    assert "pre-up hook failed" in (info.last_error or "")
    assert len((project_dir / "attempts").read_text().splitlines()) == 3


async def test_hanging_hook_is_cut_at_its_timeout(client: DaemonClient, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            hooks:
              pre-up:
                - {run: "echo $$ > hook-pid; exec sleep 1000", timeout: 1s}
    """)
    await client.add_source(project_dir, name="p", start=True)
    info = await client.get_service_status("p:web")
    assert info.state == "crashed"
    assert "timed out after 1s" in (info.last_error or "")
    pid = int((project_dir / "hook-pid").read_text())
    assert _gone(pid)


async def test_failing_post_up_stops_the_service(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "echo $$ > pid; exec sleep 1000"}}
            hooks:
              post-up:
                - run: "exit 4"
    """)
    await client.add_source(project_dir, name="p", start=True)
    started = await events.expect("service_started", "p:web")  # its pid (the shell's, exec'd)
    info = await client.get_service_status("p:web")
    assert info.state == "crashed"
    assert "post-up hook failed" in (info.last_error or "")
    assert "stopped" in (info.last_error or "")
    assert started.pid and _gone(started.pid)


async def test_failing_down_hooks_never_block_a_stop(client: DaemonClient, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        hooks:
          pre-down: [{run: "exit 1"}]
          post-down: [{run: "exit 1"}]
        services:
          web:
            runner: {type: script, script: {run: "echo $$ > pid; exec sleep 1000"}}
            hooks:
              pre-down: [{run: "exit 5"}]
              post-down: [{run: "exit 6", on_failure: abort}]
    """)
    await client.add_source(project_dir, name="p", start=True)
    pid = (await client.get_service_status("p:web")).pid  # the shell's, exec'd into sleep
    assert pid
    await client.stop_source("p")
    info = await client.get_service_status("p:web")
    assert info.state == "stopped"
    assert _gone(pid)
    messages = [line.message for line in await client.get_logs("p:web")]
    # pre-down warns by default; post-down was told to abort: either way the stop went on.
    assert any("pre-down hook" in m and "exited with code 5" in m for m in messages), messages
    assert any("post-down hook failed" in m and "the stop goes on" in m for m in messages), messages


@pytest.mark.parametrize(("event", "outcome"), [
    ("pre-up", "no service was started"),
    ("post-up", "its services were stopped again"),
])
async def test_failing_global_up_hook_fails_the_start(
    client: DaemonClient, project_dir: Path, event: str, outcome: str
) -> None:
    write_project(project_dir, f"""
        version: "1"
        hooks:
          {event}: [{{run: "echo no database; exit 2"}}]
        services:
          web:
            runner: {{type: script, script: {{run: "echo $$ > pid; exec sleep 1000"}}}}
    """)
    with pytest.raises(DaemonError) as caught:
        await client.add_source(project_dir, name="p", start=True)
    assert caught.value.code == ErrorCode.HOOK_FAILED
    assert f"{event} hook failed" in str(caught.value)
    assert outcome in str(caught.value)
    assert (await client.get_service_status("p:web")).state == "stopped"
    pid_file = project_dir / "pid"
    if event == "pre-up":
        assert not pid_file.exists()
    else:
        assert _gone(int(pid_file.read_text()))
    messages = [line.message for line in await client.get_logs("p:@hooks")]
    assert any("no database" in m for m in messages), messages


# --- build ------------------------------------------------------------------------------


def _build_project(directory: Path, command: str, when: str = "missing") -> None:
    write_project(directory, f"""
        version: "1"
        services:
          app:
            runner: {{type: script, script: {{run: "exec ./bin/app"}}}}
            build:
              command: {_quote(command)}
              when: {when}
              output: bin/app
            restart: {{policy: never}}
    """)


BUILD = ("echo building >> builds; mkdir -p bin; "
         "printf '#!/bin/sh\\nexec sleep 1000\\n' > bin/app; chmod +x bin/app; echo built")


async def test_missing_builds_once_and_skips_while_the_output_exists(client: DaemonClient, project_dir: Path) -> None:
    _build_project(project_dir, BUILD)
    await client.add_source(project_dir, name="p", start=True)
    assert (await client.get_service_status("p:app")).state == "running"
    assert (project_dir / "builds").read_text().splitlines() == ["building"]
    messages = [(line.stream, line.message) for line in await client.get_logs("p:app")]
    assert ("build", "[build] built") in messages or any(
        stream == "build" and "built" in message for stream, message in messages
    ), messages

    await client.restart_service("p:app")
    assert (await client.get_service_status("p:app")).state == "running"
    assert (project_dir / "builds").read_text().splitlines() == ["building"]

    # On demand: `hive service build` builds even though the output exists.
    result = run_cli("service", "build", "p:app")
    assert result.returncode == 0, result.stderr
    assert "built" in result.stdout
    assert (project_dir / "builds").read_text().splitlines() == ["building", "building"]


async def test_failing_build_is_reported_with_its_output(client: DaemonClient, project_dir: Path) -> None:
    _build_project(project_dir, "echo compiling; echo 'main.c:3: error: expected ;' >&2; exit 2")
    await client.add_source(project_dir, name="p", start=True)
    info = await client.get_service_status("p:app")
    assert info.state == "crashed"
    assert "Build failed for service p:app" in (info.last_error or "")
    assert "main.c:3: error: expected ;" in (info.last_error or "")
    messages = [line.message for line in await client.get_logs("p:app")]
    assert any("compiling" in m for m in messages)

    result = run_cli("service", "build", "p:app")
    assert result.returncode != 0
    assert "main.c:3: error: expected ;" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_stop_cancels_a_running_build(client: DaemonClient, project_dir: Path) -> None:
    _build_project(project_dir, "echo $$ > build-pid; exec sleep 1000", when="always")
    await client.add_source(project_dir, name="p", start=False)
    pid_file = project_dir / "build-pid"
    answers: list[str] = []

    async def start() -> None:
        try:
            await client.start_service("p:app")
        except DaemonError as exc:  # the stop came first: the start says so
            answers.append(str(exc))

    async with anyio.create_task_group() as starting:
        starting.start_soon(start)
        await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the build")
        pid = int(pid_file.read_text())
        await client.stop_service("p:app")
    assert answers and "p:app: stopped" in answers[0]
    assert (await client.get_service_status("p:app")).state == "stopped"
    assert _gone(pid)


