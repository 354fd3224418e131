"""The overall verdict: several checks, start_period, ports, unknown types, the monitor's surface."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import pytest

from hive.config import HealthCheckSpec, parse_service_entry
from hive.daemon.health import HealthMonitor, format_seconds
from tests.health.helpers import (
    cmd_check,
    http_check,
    http_server,
    make_monitor,
    refused_port,
    running,
    tcp_check,
    tcp_listener,
)

pytestmark = pytest.mark.anyio


async def test_healthy_only_when_every_check_passes(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    async with http_server(tmp_path) as server, tcp_listener() as listener:
        checks = [
            http_check(server.port, retries=2),
            tcp_check(listener.port),
            cmd_check("test -f ready", working_dir=tmp_path, retries=1000),
        ]
        monitor, recorder = make_monitor(checks)
        async with running(monitor):
            # http and tcp pass again and again, the cmd check keeps failing: no verdict.
            await recorder.wait_results(lambda r: r.kind == "cmd" and not r.healthy, count=3)
            await recorder.wait_results(lambda r: r.kind == "http" and bool(r.healthy), count=2)
            await recorder.wait_results(lambda r: r.kind == "tcp" and bool(r.healthy), count=2)
            assert monitor.healthy is None
            assert [r.healthy for r in monitor.results()] == [True, True, False]

            flag.touch()
            change, _ = await recorder.next_change()
            assert change.healthy is True
            assert change.message == "; ".join(
                [
                    f"GET 127.0.0.1:{server.port}/health: HTTP 200 from /health",
                    f"tcp 127.0.0.1:{listener.port}: connected to 127.0.0.1:{listener.port}",
                    "cmd: test -f ready: exit status 0",
                ]
            )

            # One check going bad is enough, and the message names only that one.
            server.set_mode("503")
            change, _ = await recorder.next_change()
            assert change.healthy is False
            assert change.message == (
                f"GET 127.0.0.1:{server.port}/health: HTTP 503 from /health "
                "(2 consecutive failures)"
            )
            assert [r.healthy for r in change.results] == [False, True, True]

            server.set_mode("200")
            change, _ = await recorder.next_change()
            assert change.healthy is True
    assert [c.healthy for c in recorder.changes] == [True, False, True]


async def test_results_in_config_order_before_and_after_checks(tmp_path: Path) -> None:
    with refused_port() as port:
        checks = [tcp_check(port, retries=1), cmd_check("true", working_dir=tmp_path)]
        monitor, recorder = make_monitor(checks)
        before = monitor.results()
        assert [(r.kind, r.target, r.healthy, r.checked_at) for r in before] == [
            ("tcp", f"tcp 127.0.0.1:{port}", None, None),
            ("cmd", "cmd: true", None, None),
        ]
        async with running(monitor):
            change, _ = await recorder.next_change()  # the tcp check fails at once
            assert change.healthy is False
            await recorder.wait_results(lambda r: r.kind == "cmd")
    after = monitor.results()
    assert [r.kind for r in after] == ["tcp", "cmd"]
    assert after[0].healthy is False
    assert after[0].consecutive_failures >= 1
    assert after[1].healthy is True
    assert after[1].consecutive_failures == 0
    for result in after:
        assert result.checked_at is not None
        assert result.checked_at.tzinfo is not None
        assert str(result.checked_at.utcoffset()) == "0:00:00"


async def test_start_period_ignores_failures_but_not_passes(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    check = cmd_check("test -f ready", working_dir=tmp_path, retries=1, start_period=3600)
    monitor, recorder = make_monitor([check])
    async with running(monitor):
        failures = await recorder.wait_results(lambda r: not r.healthy, count=3)
        assert [r.consecutive_failures for r in failures] == [0, 0, 0]
        assert monitor.healthy is None

        flag.touch()  # a pass counts at once, even in the start period...
        change, _ = await recorder.next_change()
        assert change.healthy is True

        flag.unlink()  # ...and ends it: failures count from now on.
        change, seen = await recorder.next_change()
        assert change.healthy is False
        assert change.results[0].consecutive_failures == 1
        assert [r.consecutive_failures for r in seen if not r.healthy] == [1]


async def test_failures_count_once_the_start_period_is_over(tmp_path: Path) -> None:
    monitor, recorder = make_monitor(
        [cmd_check("false", working_dir=tmp_path, retries=2, start_period=0.5)]
    )
    async with running(monitor):
        change, seen = await recorder.next_change()
    assert change.healthy is False
    assert seen[0].consecutive_failures == 0  # the first probe runs inside the start period
    counted = [r.consecutive_failures for r in seen if r.consecutive_failures]
    assert counted == [1, 2]


@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_port_templates_are_rendered(tmp_path: Path, kind: str) -> None:
    async with http_server(tmp_path) as server:
        template = "{{runtime.port.http}}"
        check = http_check(template) if kind == "http" else tcp_check(template)
        monitor, recorder = make_monitor([check], ports={"http": server.port, "admin": 1})
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is True
    expected = f"GET 127.0.0.1:{server.port}/health" if kind == "http" else (
        f"tcp 127.0.0.1:{server.port}"
    )
    assert change.results[0].target == expected


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("{{runtime.port.admin}}", "Unresolved runtime port: {{runtime.port.admin}}"),
        ("{{uses.db.port.pg}}", "Unknown uses alias: db in {{uses.db.port.pg}}"),
        ("web", "invalid port 'web': expected a number"),
        ("", "invalid port '': expected a number"),
        ("-1", "invalid port '-1': expected a number"),
        ("70000", "invalid port 70000: out of range 1-65535"),
        ("0", "invalid port 0: out of range 1-65535"),
    ],
)
@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_bad_ports_fail_the_check(kind: str, port: str, message: str) -> None:
    check = http_check(port, retries=2) if kind == "http" else tcp_check(port, retries=2)
    monitor, recorder = make_monitor([check], ports={"http": 8080})
    async with running(monitor):
        change, seen = await recorder.next_change()
    assert change.healthy is False
    assert [(r.message, r.consecutive_failures) for r in seen] == [(message, 1), (message, 2)]
    assert change.results[0].target == (
        f"GET 127.0.0.1:{port}/health" if kind == "http" else f"tcp 127.0.0.1:{port}"
    )


@pytest.mark.parametrize("kind", ["mariadb", "carrier-pigeon", "my-plugin"])
async def test_unknown_types_fail(kind: str) -> None:
    check = HealthCheckSpec(type=kind, config={"port": "5432"}, interval=0.05, retries=2)
    monitor, recorder = make_monitor([check])
    async with running(monitor):
        change, seen = await recorder.next_change()
    assert change.healthy is False
    message = f"health check type '{kind}' is not available"
    assert [r.message for r in seen] == [message, message]
    assert (change.results[0].kind, change.results[0].target) == (kind, kind)
    assert change.message == f"{kind}: {message} (2 consecutive failures)"


async def test_unknown_type_keeps_the_service_from_being_healthy(tmp_path: Path) -> None:
    checks = [
        cmd_check("true", working_dir=tmp_path),
        HealthCheckSpec(type="my-plugin", config={}, interval=0.05, retries=1000),
    ]
    monitor, recorder = make_monitor(checks)
    async with running(monitor):
        await recorder.wait_results(lambda r: r.kind == "cmd" and bool(r.healthy), count=3)
        assert monitor.healthy is None


async def test_missing_type_block_fails_the_check() -> None:
    check = HealthCheckSpec(type="http", config={}, interval=0.05, retries=1)
    monitor, recorder = make_monitor([check])
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.results[0].message == "missing 'http' configuration"


async def test_checks_from_a_service_mapping(tmp_path: Path) -> None:
    async with http_server(tmp_path) as server:
        service = parse_service_entry(
            "web",
            {
                "runner": {"type": "script", "script": {"run": "serve"}},
                "rollout": {"type": "recreate", "recreate": {"ports": {"http": server.port}}},
                "healthcheck": [
                    {
                        "type": "http",
                        "http": {"port": "{{runtime.port.http}}", "path": "/ready",
                                 "interval": "50ms", "retries": 2},
                    },
                    {"type": "tcp", "tcp": {"port": str(server.port), "interval": "50ms"}},
                    {"type": "cmd", "cmd": {"command": "test -d .", "interval": "50ms"}},
                ],
            },
            root=tmp_path,
            source_name="proj",
        )
        monitor, recorder = make_monitor(service.healthchecks, ports=service.ports())
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is True
    assert [r.target for r in change.results] == [
        f"GET 127.0.0.1:{server.port}/ready",
        f"tcp 127.0.0.1:{server.port}",
        "cmd: test -d .",
    ]


async def test_no_checks_means_unknown_and_run_waits_to_be_cancelled() -> None:
    monitor, _ = make_monitor([])
    returned = False

    async def run() -> None:
        nonlocal returned
        await monitor.run()
        returned = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert not returned
        assert monitor.healthy is None
        assert monitor.results() == []
        tg.cancel_scope.cancel()
    assert not returned


async def test_a_monitor_runs_once(tmp_path: Path) -> None:
    monitor, recorder = make_monitor([cmd_check("true", working_dir=tmp_path)])
    async with running(monitor):
        await recorder.next_change()
    with pytest.raises(RuntimeError, match="runs once"):
        await monitor.run()


async def test_a_failing_callback_does_not_stop_the_monitor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bool] = []
    calls = [anyio.Event(), anyio.Event()]
    flag = tmp_path / "ready"
    flag.touch()

    def on_change(healthy: bool, message: str) -> None:
        if len(seen) < len(calls):
            calls[len(seen)].set()
        seen.append(healthy)
        raise RuntimeError("subscriber broke")

    monitor = HealthMonitor(
        "proj:web",
        [cmd_check("test -f ready", working_dir=tmp_path, retries=1)],
        ports={},
        env=dict(os.environ),
        on_change=on_change,
    )
    with caplog.at_level(logging.ERROR, logger="hive.health"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)
            with anyio.fail_after(15):
                await calls[0].wait()
                flag.unlink()
                await calls[1].wait()
            tg.cancel_scope.cancel()
    assert seen == [True, False]
    assert monitor.healthy is False
    assert "health callback of proj:web failed" in caplog.text


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (5.0, 30, 0.3, 0.05, 1.5, 90)] == [
        "5s", "30s", "300ms", "50ms", "1.5s", "90s"
    ]
