"""The metrics core plugin: the daemon and its services in Prometheus' text format.

    [plugins.metrics]
    [plugins.metrics.settings]
    listen = "127.0.0.1:9464"     # host:port of the HTTP endpoint (port 0: any free port)

``GET /metrics`` answers with, per service instance, its state (``hive_service_state``,
1 for the current state), restarts, and the CPU seconds and resident bytes of its process
tree; for the daemon, its uptime, sources, services and connected clients, and the
requests it answered (``request_stats``): a count per request type, the errors among them,
and their durations as a histogram; for each core plugin, its state, the events delivered
to it and dropped, its failures; and the events of each kind this plugin received.

The service list is refreshed when a service event arrives (not on a timer); CPU and
memory are read with psutil when Prometheus scrapes, from the pids that list holds, on
the HTTP server's thread, which also asks the daemon for its request counts and plugins
then (through the plugin's client, on the plugin's loop). A container without a host pid
(a remote or VM-backed engine) reports what its engine counts (``container_stats``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple
from wsgiref.simple_server import WSGIServer

import msgspec
import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hive.plugin import CorePlugin, DaemonEvent, PluginCallError

if TYPE_CHECKING:
    from hive_client import ContainerUsage, DaemonClient, DaemonStatus, PluginInfo, ServiceInfo
    from hive_client.protocol import RequestStatsReply

__all__ = ["Metrics", "MetricsSettings"]

log = logging.getLogger("hive.plugins.metrics")
STATES = ("stopped", "starting", "running", "unhealthy", "stopping", "crashed", "failed")
PLUGIN_STATES = ("starting", "running", "degraded", "unhealthy", "half_open", "disabled", "failed")
ASK_TIMEOUT = 5.0  # a scrape waits this long for the daemon's request counts and plugins


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen must be host:port, not {self.listen!r}")


def _usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of the process tree of ``pid``; None if it is gone."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    cpu, rss = 0.0, 0
    for process in tree:
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
        except psutil.Error:
            continue
    return cpu, rss


class _Asked(NamedTuple):
    """What a scrape asks the daemon."""

    stats: RequestStatsReply
    plugins: list[PluginInfo]
    containers: dict[str, ContainerUsage]  # by fqn: those without a host pid


class _Snapshot(Collector):
    """What a scrape reports: the last service list and status (replaced whole, so the
    HTTP thread reads a consistent pair), plus CPU and memory read at scrape time."""

    def __init__(self, ask: Callable[[], _Asked | None]) -> None:
        self.services: list[ServiceInfo] = []
        self.status: DaemonStatus | None = None
        self.events: dict[str, int] = {}  # by kind; replaced whole on each event (read by another thread)
        self.ask = ask

    def collect(self) -> Iterator[Any]:
        services, status = self.services, self.status
        labels = ["service", "instance"]
        state = GaugeMetricFamily("hive_service_state", "1 for the service instance's current state",
                                  labels=[*labels, "state"])
        restarts = CounterMetricFamily("hive_service_restarts", "restarts of the service instance", labels=labels)
        cpu = CounterMetricFamily("hive_service_cpu_seconds", "CPU time of the instance's process tree", labels=labels)
        memory = GaugeMetricFamily("hive_service_memory_bytes", "resident memory of the instance's process tree",
                                   labels=labels)
        asked = self.ask()
        containers = asked.containers if asked is not None else {}
        for info in services:
            key = [info.fqn.partition("#")[0], str(info.instance or 0)]
            for name in sorted({*STATES, info.state}):
                state.add_metric([*key, name], 1.0 if name == info.state else 0.0)
            restarts.add_metric(key, info.restart_count)
            if info.pid:
                usage = _usage(info.pid)
            else:  # a container whose processes the host cannot see: its engine's count
                counted = containers.get(info.fqn)
                usage = (counted.cpu_seconds, counted.memory_bytes) if counted is not None else None
            if usage is not None:
                cpu.add_metric(key, usage[0])
                memory.add_metric(key, usage[1])
        yield from (state, restarts, cpu, memory)
        if status is not None:
            yield GaugeMetricFamily("hive_daemon_uptime_seconds", "seconds since the daemon started",
                                    value=status.uptime_secs)
            yield GaugeMetricFamily("hive_daemon_sources", "registered sources", value=status.source_count)
            yield GaugeMetricFamily("hive_daemon_services", "services", value=status.total_services)
            yield GaugeMetricFamily("hive_daemon_clients", "connected clients", value=status.clients)
        events = CounterMetricFamily("hive_events", "events of each kind this plugin received", labels=["kind"])
        for kind, count in sorted(self.events.items()):
            events.add_metric([kind], count)
        yield events
        if asked is not None:
            yield from _requests(asked.stats)
            yield from _plugins(asked.plugins)


def _plugins(plugins: list[PluginInfo]) -> Iterator[Any]:
    state = GaugeMetricFamily("hive_plugin_state", "1 for the plugin's current state", labels=["plugin", "state"])
    delivered = CounterMetricFamily("hive_plugin_events_delivered", "events its on_event handled", labels=["plugin"])
    dropped = CounterMetricFamily("hive_plugin_events_dropped", "events lost because its queue was full",
                                  labels=["plugin"])
    failures = CounterMetricFamily("hive_plugin_failures", "its calls that raised or timed out", labels=["plugin"])
    for plugin in plugins:
        for name in sorted({*PLUGIN_STATES, str(plugin.state)}):
            state.add_metric([plugin.name, name], 1.0 if name == plugin.state else 0.0)
        delivered.add_metric([plugin.name], plugin.delivered)
        dropped.add_metric([plugin.name], plugin.dropped)
        failures.add_metric([plugin.name], plugin.failed)
    yield from (state, delivered, dropped, failures)


def _requests(stats: RequestStatsReply) -> Iterator[Any]:
    """The daemon's requests: a counter of errors and a histogram of durations, per type."""
    errors = CounterMetricFamily("hive_daemon_request_errors", "requests answered with an error",
                                 labels=["request"])
    durations = HistogramMetricFamily("hive_daemon_request_duration_seconds",
                                      "time the daemon took to answer, per request type", labels=["request"])
    for stat in stats.requests:
        errors.add_metric([stat.request], stat.errors)
        buckets = [(f"{bound:g}", count) for bound, count in zip(stats.bounds, stat.buckets, strict=True)]
        durations.add_metric([stat.request], [*buckets, ("+Inf", stat.count)], sum_value=stat.seconds)
    yield errors
    yield durations


class Metrics(CorePlugin[MetricsSettings]):
    name = "metrics"
    version = "1.0.0"
    Settings = MetricsSettings
    default_scope: ClassVar[Literal["read", "operate", "admin"]] = "read"  # it only reads
    call_scopes = {"address": "read"}

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.snapshot = _Snapshot(self._ask)
        await self._refresh()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.snapshot)
        host, _, port = self.settings.listen.rpartition(":")
        self.server: WSGIServer
        self.thread: threading.Thread
        self.server, self.thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        self.address = f"{host}:{self.server.server_port}"
        log.info("metrics on http://%s/metrics", self.address)

    async def _refresh(self) -> None:
        services = await self.client.list_services()
        self.snapshot.services, self.snapshot.status = services, await self.client.status()

    def _ask(self) -> _Asked | None:
        """The daemon's request counts, plugins and container stats, asked from the HTTP
        server's thread (a scrape) on the plugin's loop."""
        asked = asyncio.run_coroutine_threadsafe(self._ask_daemon(), self.loop)
        try:
            return asked.result(ASK_TIMEOUT)
        except Exception as exc:  # the scrape still reports the rest
            asked.cancel()
            log.warning("metrics: cannot read the daemon's request counts and plugins: %s", exc)
            return None

    async def _ask_daemon(self) -> _Asked:
        unseen = [info.fqn for info in self.snapshot.services if info.container_id and not info.pid]
        containers = await self.client.container_stats(unseen) if unseen else []
        return _Asked(await self.client.request_stats(), await self.client.list_plugins(),
                      {usage.fqn: usage for usage in containers})

    async def on_event(self, event: DaemonEvent) -> None:
        kind = str(event.__struct_config__.tag)
        self.snapshot.events = {**self.snapshot.events, kind: self.snapshot.events.get(kind, 0) + 1}
        if event.__struct_config__.tag in ("daemon_started", "plugin_configured") or hasattr(event, "fqn"):
            await self._refresh()

    async def call(self, command: str, args: dict[str, Any]) -> Any:
        if command == "address":
            return {"url": f"http://{self.address}/metrics"}
        raise PluginCallError(f"unknown command {command!r} (known: address)")

    async def shutdown(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
