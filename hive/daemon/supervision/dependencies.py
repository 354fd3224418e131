"""What an instance waits for before it spawns: its ``depends_on`` and its ``uses``.

A dependency (same source) is ready when one of its instances is (healthy when it has
health checks, else running); a dependency that failed, or is not wanted running, fails
the start. A used service (any source, found by its expose name) must exist, accept the
consumer's secret, and be ready; its variables and ports are then injected into the
consumer's environment. Every wait is event-driven (the service's ``changed`` event, the
registry's expose index, the instance's ``wakeup`` when it is told to stop) and bounded
by :attr:`Dependencies.timeout` (``[daemon] dependency_timeout`` of config.toml, read at
each wait so a reload applies to the next one).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from hive.config import UsesSpec

from ..exposure import alias_of, provided_vars, renamed_vars, verify_secret
from .machine import Phase
from .phases import Phases
from .registry import Registry
from .runtime import InstanceRuntime, ServiceRuntime

__all__ = ["DEPENDENCY_TIMEOUT", "Dependencies"]

# How long a start waits for a dependency (or a used service) to become ready.
DEPENDENCY_TIMEOUT = 60.0


class Dependencies:
    def __init__(self, registry: Registry, phases: Phases, timeout: Callable[[], float] = lambda: DEPENDENCY_TIMEOUT) -> None:
        self._registry = registry
        self._phases = phases
        self.timeout_of = timeout

    @property
    def timeout(self) -> float:
        return self.timeout_of()

    async def wait_ready(self, instance: InstanceRuntime) -> bool:
        """Its dependencies ready, then its used services; False (phase set) if not."""
        ready = await self._wait_dependencies(instance) and await self._wait_uses(instance)
        if ready and instance.last_error and instance.last_error.startswith("waiting for "):
            self._phases.waiting(instance, None)
        return ready

    async def _wait_dependencies(self, instance: InstanceRuntime) -> bool:
        service = instance.service
        for name in service.config.depends_on:
            dependency = self._registry.services.get(f"{service.source}:{name}")
            if dependency is None:
                continue
            waiting = f"waiting for {dependency.fqn}"
            try:
                with anyio.fail_after(self.timeout):
                    while not any(i.ready for i in dependency.instances):
                        if instance.stopping:
                            return False
                        failed = [
                            i for i in dependency.instances
                            if i.phase in (Phase.CRASHED, Phase.EXITED, Phase.PORT_CONFLICT)
                        ]
                        if failed or dependency.desired != "running" or dependency.scale == 0:
                            state = failed[0].state if failed else dependency.instances[0].state
                            return self._phases.fail(instance, f"dependency {dependency.fqn} failed "
                                                               f"(state: {state}), cannot start {instance.fqn}")
                        self._phases.waiting(instance, waiting)
                        await _either(dependency.changed, instance)  # it changes, or we stop
            except TimeoutError:
                return self._phases.fail(instance, f"timeout waiting for dependency {dependency.fqn} "
                                                   f"(not ready within {self.timeout:g} s: [daemon] dependency_timeout)")
        return True

    async def _wait_uses(self, instance: InstanceRuntime) -> bool:
        """For each ``uses``: the provider (any source) exists, accepts our secret, and
        is ready; then its variables and ports are ours. False (state set) if not."""
        service = instance.service
        injected: dict[str, str] = {}
        uses_ports: dict[str, dict[str, int]] = {}
        for use in service.config.uses:
            try:
                with anyio.fail_after(self.timeout):
                    provider = await self._wait_provider(instance, use)
            except TimeoutError:
                provider = self._registry.exposes.get(use.name)
                return self._phases.start_failed(
                    instance,
                    f"Unknown exposed service: {use.name}" if provider is None
                    else f"timeout waiting for exposed service {use.name!r} ({provider.fqn}) to be healthy",
                )
            except _Refused as refusal:
                return self._phases.start_failed(instance, str(refusal))
            if provider is None:
                return False  # told to stop while waiting
            expose = provider.config.expose
            assert expose is not None
            ports = provider.instances[0].ports or provider.config.ports()
            injected.update(renamed_vars(use, provided_vars(expose, ports)))
            uses_ports[alias_of(use)] = ports
        instance.injected = injected
        instance.uses_ports = uses_ports
        return True

    async def _wait_provider(self, instance: InstanceRuntime, use: UsesSpec) -> ServiceRuntime | None:
        checked: ServiceRuntime | None = None
        while not instance.stopping:
            provider = self._registry.exposes.get(use.name)
            if provider is not None and provider is not checked:
                await _check_secret(provider, use)
                checked = provider
            if provider is not None and any(i.ready for i in provider.instances):
                return provider
            waiting = f"waiting for exposed service {use.name!r}" + (
                f" ({provider.fqn})" if provider is not None else "")
            self._phases.waiting(instance, waiting)
            event = self._registry.exposes_changed() if provider is None else provider.changed
            await _either(event, instance)
        return None


class _Refused(Exception):
    """A used service will not have us (a missing or wrong secret)."""


async def _check_secret(provider: ServiceRuntime, use: UsesSpec) -> None:
    expose = provider.config.expose
    assert expose is not None
    if expose.secret is None:
        return  # open to every source
    if use.secret is None:
        raise _Refused(f"Exposed service {use.name!r} requires a secret")
    stored = expose.secret
    if not await anyio.to_thread.run_sync(verify_secret, use.secret, stored):
        raise _Refused(f"Invalid secret for exposed service {use.name!r}")


async def _either(event: anyio.Event, instance: InstanceRuntime) -> None:
    """Until ``event`` is set or the instance is woken (told to stop); a wake-up is used up."""
    async with anyio.create_task_group() as race:
        race.start_soon(_wait_then_cancel, event, race.cancel_scope)
        race.start_soon(_wait_then_cancel, instance.wakeup, race.cancel_scope)
    if instance.wakeup.is_set():
        instance.wakeup = anyio.Event()


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
