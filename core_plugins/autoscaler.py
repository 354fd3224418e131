"""The autoscaler core plugin: scales services by CPU and memory.

Every ``check_interval`` it samples each opted-in service: for each running instance, the
CPU time and resident memory of its whole process tree (a container's tree through the
host pid its engine reports). CPU is a fraction of one core (1.0: one core busy), memory
in MiB, both per instance. The averages over the last ``window`` samples are compared
with the thresholds:

- CPU above ``cpu_scale_up_threshold`` (or memory above ``memory_scale_up_mb``): one more
  instance (``step``), up to ``max_instances``;
- CPU below ``cpu_scale_down_threshold`` (and memory below ``memory_scale_down_mb`` when
  set): one fewer, down to ``min_instances``;

never twice within ``cooldown`` of the service's last change, and with fresh samples
after each change. A count it did not set (a manual ``hive scale``) is a change too: it is
respected for a ``cooldown`` (``kind`` ``manual``). ``min_instances`` and
``max_instances`` apply at once, whatever the load, outside a cooldown: a service
outside them is brought inside on the next round. Every decision — a scale, or a scale a
limit held back — is published as a ``plugin_notice`` event (``kind`` ``scaled`` /
``held``) with its reason and figures; ``held`` once per limit reached, until the count
changes.

Settings (``[plugins.autoscaler.settings]``)::

    services = ["web:api", "jobs:*"]   # FQN patterns that opt in
    check_interval = 15.0
    cpu_scale_up_threshold = 0.80
    cpu_scale_down_threshold = 0.20
    min_instances = 1
    max_instances = 10
    cooldown = 60.0
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import anyio
import msgspec
import psutil

from hive.plugin import CorePlugin, DaemonClient, DaemonEvent
from hive_client import ServiceInfo, fqn_matches

__all__ = ["Autoscaler", "AutoscalerSettings"]

log = logging.getLogger("hive.plugins.autoscaler")


class AutoscalerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    services: list[str]
    check_interval: float = 15.0
    window: int = 3
    cpu_scale_up_threshold: float = 0.80
    cpu_scale_down_threshold: float = 0.20
    memory_scale_up_mb: float | None = None
    memory_scale_down_mb: float | None = None
    min_instances: int = 1
    max_instances: int = 10
    cooldown: float = 60.0
    step: int = 1

    def __post_init__(self) -> None:
        if not self.services:
            raise ValueError("services must name at least one FQN pattern")
        if self.check_interval < 0.05:
            raise ValueError("check_interval must be at least 0.05 s")
        if self.window < 1 or self.step < 1:
            raise ValueError("window and step must be at least 1")
        if not 0 <= self.cpu_scale_down_threshold < self.cpu_scale_up_threshold:
            raise ValueError("cpu_scale_down_threshold must be below cpu_scale_up_threshold")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError("min_instances must be between 0 and max_instances")
        if (self.memory_scale_up_mb is not None and self.memory_scale_down_mb is not None
                and self.memory_scale_down_mb >= self.memory_scale_up_mb):
            raise ValueError("memory_scale_down_mb must be below memory_scale_up_mb")


@dataclass
class _Tracked:
    """What the autoscaler remembers of one service."""

    samples: deque[tuple[float, float]]  # (cpu cores, MiB) per instance, averaged over instances
    last_change: float = float("-inf")
    cpu_seen: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (wall, cpu s)
    held: str = ""  # the limit last reported held ("maximum 3"), not repeated
    count: int | None = None  # the instance count last seen or set


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _measure(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, resident MiB) of the process tree of ``pid``."""
    cpu = 0.0
    rss = 0
    for process in _tree(pid):
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
        except psutil.Error:
            continue
    return cpu, rss / 2**20


class Autoscaler(CorePlugin[AutoscalerSettings]):
    name = "autoscaler"
    version = "1.0.0"
    Settings = AutoscalerSettings

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        self.tracked: dict[str, _Tracked] = {}
        self._container_pids: dict[str, int] = {}

    async def on_event(self, event: DaemonEvent) -> None:
        if event.__struct_config__.tag == "plugin_configured":
            self.tracked.clear()  # new thresholds or window: start the averages afresh

    async def run(self) -> None:
        while True:
            began = anyio.current_time()
            try:
                await self.check()
            except Exception:
                log.exception("autoscaler check failed")
            interval = self.settings.check_interval
            await anyio.sleep(max(0.0, interval - (anyio.current_time() - began)))

    async def check(self) -> None:
        """One round: sample every opted-in service and decide."""
        services: dict[str, list[ServiceInfo]] = {}
        for info in await self.client.list_services():
            base = info.fqn.partition("#")[0]
            if any(fqn_matches(pattern, base) for pattern in self.settings.services):
                services.setdefault(base, []).append(info)
        for base in list(self.tracked):
            if base not in services:
                del self.tracked[base]
        containers = {info.container_id for infos in services.values() for info in infos}
        self._container_pids = {cid: pid for cid, pid in self._container_pids.items() if cid in containers}
        for base, instances in services.items():
            await self._decide(base, instances)

    async def _pid_of(self, info: ServiceInfo) -> int | None:
        if info.pid:
            return info.pid
        if not info.container_id:
            return None
        cached = self._container_pids.get(info.container_id)
        if cached is not None:
            return cached
        for engine in ("docker", "podman"):
            try:
                result = await anyio.run_process(
                    [engine, "inspect", "--format", "{{.State.Pid}}", info.container_id], check=False)
            except OSError:
                continue
            if result.returncode == 0 and result.stdout.strip().isdigit():
                pid = int(result.stdout.strip())
                self._container_pids[info.container_id] = pid
                return pid
        return None

    async def _decide(self, base: str, instances: list[ServiceInfo]) -> None:
        settings = self.settings
        tracked = self.tracked.setdefault(base, _Tracked(samples=deque(maxlen=settings.window)))
        now = time.monotonic()
        running = [info for info in instances if info.state in ("running", "unhealthy")]
        count = max((info.instances for info in instances), default=len(instances))
        if tracked.count is not None and count != tracked.count:  # scaled by someone else
            tracked.count, tracked.last_change, tracked.held = count, now, ""
            tracked.samples.clear()
            tracked.cpu_seen.clear()
            await self.client.emit_event(
                "manual", f"{base} was scaled to {count} by hand: respected for {settings.cooldown:g} s",
                fqn=base, data={"instances": count})
            return
        tracked.count = count
        bounded = min(settings.max_instances, max(settings.min_instances, count))
        if bounded != count and now - tracked.last_change >= settings.cooldown:
            limit = "minimum" if bounded > count else "maximum"
            await self._scale(base, tracked, count, bounded, f"{count} is outside the {limit} of {bounded}",
                              {"instances": count})
            return
        cores, memory, measured = 0.0, 0.0, 0
        seen: dict[int, tuple[float, float]] = {}
        for info in running:
            pid = await self._pid_of(info)
            if pid is None:
                continue
            try:
                cpu, mib = _measure(pid)
            except psutil.Error:
                continue
            seen[pid] = (now, cpu)
            previous = tracked.cpu_seen.get(pid)
            if previous is None or now <= previous[0]:
                continue  # a first look gives no rate yet
            cores += max(0.0, cpu - previous[1]) / (now - previous[0])
            memory += mib
            measured += 1
        tracked.cpu_seen = seen
        if not measured:
            return
        tracked.samples.append((cores / measured, memory / measured))
        if len(tracked.samples) < settings.window:
            return
        cpu_avg = sum(sample[0] for sample in tracked.samples) / len(tracked.samples)
        mem_avg = sum(sample[1] for sample in tracked.samples) / len(tracked.samples)
        figures = {"cpu": round(cpu_avg, 3), "memory_mb": round(mem_avg, 1), "instances": count}
        up_reason = self._up_reason(cpu_avg, mem_avg)
        down_reason = None if up_reason else self._down_reason(cpu_avg, mem_avg)
        if up_reason is None and down_reason is None:
            return
        if now - tracked.last_change < settings.cooldown:
            return  # inside the cooldown: no decision, no flapping
        if up_reason is not None:
            target = min(settings.max_instances, count + settings.step)
            reason = up_reason
        else:
            assert down_reason is not None
            target = max(settings.min_instances, count - settings.step)
            reason = down_reason
        if target == count:
            limit = "maximum" if up_reason else "minimum"
            if tracked.held != f"{limit} {count}":  # once per limit reached, not every round
                tracked.held = f"{limit} {count}"
                await self.client.emit_event("held", f"{reason}, but {base} is at its {limit} of {count}",
                                             fqn=base, data=figures)
            return
        await self._scale(base, tracked, count, target, reason, figures)

    async def _scale(self, base: str, tracked: _Tracked, count: int, target: int, reason: str,
                     figures: dict[str, float]) -> None:
        await self.client.scale_service(base, target)
        tracked.count, tracked.last_change, tracked.held = target, time.monotonic(), ""
        tracked.samples.clear()
        tracked.cpu_seen.clear()
        message = f"scaled {base} from {count} to {target}: {reason}"
        log.info("%s", message)
        await self.client.emit_event("scaled", message, fqn=base, data={**figures, "to": target})

    def _up_reason(self, cpu: float, memory: float) -> str | None:
        settings = self.settings
        if cpu > settings.cpu_scale_up_threshold:
            return f"CPU {cpu:.2f} of a core per instance is above {settings.cpu_scale_up_threshold:.2f}"
        if settings.memory_scale_up_mb is not None and memory > settings.memory_scale_up_mb:
            return f"memory {memory:.0f} MiB per instance is above {settings.memory_scale_up_mb:.0f} MiB"
        return None

    def _down_reason(self, cpu: float, memory: float) -> str | None:
        settings = self.settings
        if cpu >= settings.cpu_scale_down_threshold:
            return None
        if settings.memory_scale_down_mb is not None and memory >= settings.memory_scale_down_mb:
            return None
        return f"CPU {cpu:.2f} of a core per instance is below {settings.cpu_scale_down_threshold:.2f}"
