"""The metrics plugin: a real daemon, a real service, its endpoint scraped over HTTP and
read with prometheus_client's own text parser."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hive_client import DaemonClient, NotFound
from tests.engines import IMAGE, require_engine
from tests.plugins.conftest import StartWith
from tests.support import StartFailed, run_cli, wait_until, write_project

pytestmark = pytest.mark.anyio

CONFIG = '[plugins.metrics]\n[plugins.metrics.settings]\nlisten = "127.0.0.1:0"\n'


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_scrape_shows_services_and_daemon(start_with: StartWith, project_dir: Path) -> None:
    daemon = start_with(CONFIG)
    assert "read (plugin default)" in run_cli("plugins").stdout
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)
    async with DaemonClient(daemon.socket, timeout=60) as client:
        url = (await client.plugin_call("metrics", "address"))["url"]
        await client.add_source(project_dir, name="p", start=True)
        web = dict(service="p:web", instance="0")

        def running() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            samples = _scrape(url)
            return samples if _value(samples, "hive_service_state", **web, state="running") == 1.0 else None

        samples = await wait_until(running, timeout=30, what="p:web running in the scrape")
        assert _value(samples, "hive_service_state", **web, state="stopped") == 0.0
        assert _value(samples, "hive_service_restarts_total", **web) == 0.0
        memory = _value(samples, "hive_service_memory_bytes", **web)
        assert memory is not None and memory > 0
        assert _value(samples, "hive_service_cpu_seconds_total", **web) is not None
        assert _value(samples, "hive_daemon_sources") == 1.0
        assert _value(samples, "hive_daemon_services") == 1.0

        await client.stop_service("p:web")
        await wait_until(lambda: _value(_scrape(url), "hive_service_state", **web, state="stopped") == 1.0,
                         timeout=30, what="p:web stopped in the scrape")


async def test_a_bad_listen_address_is_named(start_with: StartWith) -> None:
    with pytest.raises(StartFailed) as caught:
        start_with('[plugins.metrics]\n[plugins.metrics.settings]\nlisten = "nowhere"\n')
    assert "[plugins.metrics.settings]" in str(caught.value) and "host:port" in str(caught.value)


async def test_request_counts_are_readable_and_scraped(start_with: StartWith) -> None:
    daemon = start_with(CONFIG)
    await wait_until(lambda: _states().get("metrics") == "running", timeout=30, what="the metrics plugin to run")
    async with DaemonClient(daemon.socket, timeout=60) as client:
        for _ in range(7):
            await client.ping()
        with pytest.raises(NotFound):
            await client.get_service_status("nowhere:nothing")
        stats = {s.request: s for s in (await client.request_stats()).requests}
        url = (await client.plugin_call("metrics", "address"))["url"]
        samples = _scrape(url)
    # Read by a client: this connection's seven pings (the plugin sends none), one error.
    assert stats["ping"].count == 7 and stats["ping"].errors == 0
    assert stats["ping"].buckets[-1] <= 7 and stats["ping"].seconds > 0
    assert stats["get_service_status"].count == 1 and stats["get_service_status"].errors == 1
    # Scraped: the same counts, as a histogram per request type (the scrape's own
    # request_stats call comes after the client's).
    assert _value(samples, "hive_daemon_request_duration_seconds_count", request="ping") == 7.0
    assert _value(samples, "hive_daemon_request_duration_seconds_bucket", request="ping", le="+Inf") == 7.0
    assert _value(samples, "hive_daemon_request_errors_total", request="get_service_status") == 1.0
    assert _value(samples, "hive_daemon_request_duration_seconds_sum", request="ping") == pytest.approx(
        stats["ping"].seconds)


def _states() -> dict[str, str]:
    return {p["name"]: p["state"] for p in json.loads(run_cli("plugins", "--json").stdout)}


async def test_plugins_and_events_are_scraped(start_with: StartWith) -> None:
    daemon = start_with(CONFIG + "[plugins.raiser]\nrecovery_timeout = 0\n")
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await wait_until(lambda: _states().get("metrics") == "running", timeout=30, what="the metrics plugin to run")
        for _ in range(5):  # five failures of the raiser: its breaker opens (and stays open)
            await client.reload()
        await wait_until(lambda: _states().get("raiser") == "failed", timeout=30, what="the raiser to fail")
        url = (await client.plugin_call("metrics", "address"))["url"]
        plugins = {p.name: p for p in await client.list_plugins()}
        samples = _scrape(url)
    assert plugins["raiser"].state == "failed"
    assert _value(samples, "hive_plugin_state", plugin="raiser", state="failed") == 1.0
    assert _value(samples, "hive_plugin_state", plugin="raiser", state="running") == 0.0
    assert _value(samples, "hive_plugin_state", plugin="metrics", state="running") == 1.0
    assert _value(samples, "hive_plugin_failures_total", plugin="raiser") == plugins["raiser"].failed == 5
    assert _value(samples, "hive_plugin_events_dropped_total", plugin="metrics") == 0.0
    assert _value(samples, "hive_events_total", kind="daemon_reloaded") == 5.0
    delivered = _value(samples, "hive_plugin_events_delivered_total", plugin="metrics")
    assert delivered is not None and delivered >= 5


@pytest.mark.parametrize("engine", ["docker", "podman"])
async def test_a_container_reports_what_its_engine_counts(start_with: StartWith, project_dir: Path, engine: str) -> None:
    # A container instance has no host pid to read with psutil: its engine's stats count.
    require_engine(engine)
    daemon = start_with(CONFIG)
    write_project(project_dir, f"""
        version: "1"
        services:
          box:
            runner:
              type: {engine}
              {engine}: {{image: {IMAGE}, command: [sh, -c, "sleep 1000"]}}
        """)
    box = dict(service="p:box", instance="0")
    try:
        async with DaemonClient(daemon.socket, timeout=120) as client:
            url = (await client.plugin_call("metrics", "address"))["url"]
            await client.add_source(project_dir, name="p", start=True)
            info = await client.get_service_status("p:box")
            assert info.state == "running" and info.pid is None and info.container_id
            [usage] = await client.container_stats(["p:box"])
            assert usage.fqn == "p:box" and usage.memory_bytes > 0 and usage.cpu_seconds >= 0

            def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
                samples = _scrape(url)
                memory = _value(samples, "hive_service_memory_bytes", **box)
                return samples if memory is not None and memory > 0 else None

            samples = await wait_until(counted, timeout=60, what="p:box's memory in the scrape")
            assert _value(samples, "hive_service_cpu_seconds_total", **box) is not None
    finally:
        daemon.stop()
