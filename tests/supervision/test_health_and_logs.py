"""Health checks against a real server, and logs under a flood."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

from hive_client import DaemonClient
from tests.supervision.conftest import Events
from tests.support import DaemonProcess, free_port, run_cli, wait_for, write_project

pytestmark = pytest.mark.anyio

SERVER = """
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = not os.path.exists("sick")
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"sick")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


async def test_http_health_turns_unhealthy_and_back(client: DaemonClient, events: Events, project_dir: Path) -> None:
    port = free_port()
    project_dir.mkdir(parents=True)
    (project_dir / "server.py").write_text(SERVER)
    write_project(project_dir, f"""
        version: "1"
        services:
          web:
            runner: {{type: script, script: {{run: "{sys.executable} server.py {{{{runtime.port.http}}}}"}}}}
            rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
            healthcheck:
              type: http
              http: {{port: "{{{{runtime.port.http}}}}", path: /health, interval: 0.1s, timeout: 1s, retries: 2,
                     start_period: 60s}}
    """)
    await client.add_source(project_dir, name="p", start=True)
    healthy = await events.expect("service_health_changed", "p:web")
    assert healthy.healthy is True
    info = await client.get_service_status("p:web")
    assert info.healthy is True
    assert info.state == "running"
    assert info.health_checks
    assert info.health_checks[0].healthy is True

    (project_dir / "sick").touch()
    sick = await events.expect("service_health_changed", "p:web")
    assert sick.healthy is False
    info = await client.get_service_status("p:web")
    assert info.state == "unhealthy"
    assert "503" in info.health_checks[0].message

    (project_dir / "sick").unlink()
    recovered = await events.expect("service_health_changed", "p:web")
    assert recovered.healthy is True
    assert (await client.get_service_status("p:web")).state == "running"


async def test_flood_is_bounded_and_rotated(daemon: DaemonProcess, client: DaemonClient, events: Events, project_dir: Path, hive_env: Path) -> None:
    """A child writing as fast as it can for 5 s: the daemon's memory stays bounded."""
    (hive_env / "config.toml").write_text("[logs]\nmax_file_bytes = 2000000\nkeep_files = 3\n")
    await client.reload()
    write_project(project_dir, """
        version: "1"
        services:
          flood:
            runner:
              type: script
              script:
                run: |
                  python3 -c "
                  import sys, time
                  end = time.monotonic() + 5
                  n = 0
                  line = 'x' * 100
                  while time.monotonic() < end:
                      n += 1
                      sys.stdout.write(f'{n} {line}\\n')
                  sys.stdout.write(f'LAST {n}\\n')
                  "
    """)
    baseline = psutil.Process(daemon.pid).memory_info().rss
    peak = baseline
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_started", "p:flood")
    exited = None
    while exited is None:
        peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
        event = await events.expect("service_exited", "p:flood", timeout=30)
        exited = event
    peak = max(peak, psutil.Process(daemon.pid).memory_info().rss)
    # 10,000 buffered lines of ~110 bytes plus read chunks: far below this bound.
    assert peak - baseline < 64 * 1024 * 1024, f"daemon grew by {(peak - baseline) >> 20} MiB"

    logs_dir = hive_env / "logs" / "p"
    rotated = sorted(p.name for p in logs_dir.iterdir())
    assert any(name.endswith(".log.1") for name in rotated), rotated
    assert len([n for n in rotated if n.startswith("flood")]) <= 4

    result = run_cli("logs", "p:flood", "--tail", "10")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 10
    assert any("LAST" in line for line in lines[-3:])


async def test_hive_logs_filters(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          talk:
            runner: {type: script, script: {run: "echo hello out; echo 'ERROR: broken' >&2; exec sleep 1000"}}
    """)
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_started", "p:talk")
    wait_for(lambda: len(run_cli("logs", "p:talk", "--json").stdout.splitlines()) >= 3, what="the output to be logged")
    errors = run_cli("logs", "p:talk", "--level", "error")
    assert "ERROR: broken" in errors.stdout
    assert "hello out" not in errors.stdout
    everything = run_cli("logs", "talk")
    assert "hello out" in everything.stdout
