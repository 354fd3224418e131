"""What an instance is started with: its run spec, environment and ports, and the
hooks and build of its service.

:class:`Launcher` turns a service's configuration and an instance's runtime (its index,
its ports, what its ``uses`` provided) into the :class:`~runners.base.RunSpec` a runner
starts, and runs the service's hooks and build with the same environment. It changes no
phase: the instance task decides what a failed hook or build means.

Environment layers, lowest first: the daemon's own environment (with
:data:`MARKER_ENV`, by which a new daemon finds processes a killed one started but had
not recorded), what used services provide, the service's configuration, then Hive's
variables about the instance. Hooks and builds run without the marker.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hive.config import HookStep, RuntimeTemplateError, configured_environment, render_runtime
from hive_client import __version__
from runners.base import RunSpec

from ..runner_registry import RunnerRegistry
from .runtime import InstanceRuntime, ServiceRuntime

if TYPE_CHECKING:
    from pathlib import Path

    from ..build import BuildResult
    from ..hooks import ContainerStepRunner, HookOutcome, OutputSink
    from ..logs import LogHub

__all__ = ["BUILD_TIMEOUT", "MARKER_ENV", "Launcher", "config_digest", "port_in_use"]

# A build that takes longer is cut off (and the start fails with its output).
BUILD_TIMEOUT = 3600.0
# The environment marker that lets a new daemon find services a killed one started
# but had not yet recorded.
MARKER_ENV = "HIVE_SUPERVISOR"


class Launcher:
    def __init__(self, logs: LogHub, runners: RunnerRegistry, home: Path) -> None:
        self._logs = logs
        self._runners = runners
        self.base_env = dict(os.environ)
        self.base_env[MARKER_ENV] = str(home)
        # Hooks and builds do not carry the marker: a new daemon must not take a hook
        # left running by a killed one for the service.
        self.hook_base_env = {k: v for k, v in self.base_env.items() if k != MARKER_ENV}

    @property
    def marker(self) -> str:
        """The value of :data:`MARKER_ENV` in what this daemon starts."""
        return self.base_env[MARKER_ENV]

    # --- the run spec -----------------------------------------------------------------

    def run_spec(self, instance: InstanceRuntime) -> RunSpec:
        """What the runner starts (the instance's ports chosen on the way)."""
        service = instance.service
        config = service.config
        instance.ports = self.instance_ports(instance)
        env, own = self._environment(instance)
        script = config.runner.script
        command = (
            render_runtime(script.run, ports=instance.ports, uses=instance.uses_ports) if script else ""
        )
        stdout_path, stderr_path = self._logs.capture_paths(instance.fqn)
        return RunSpec(
            fqn=instance.fqn,
            command=command,
            working_dir=config.working_dir(),
            env=env,
            own_env=own,
            shell=script.shell if script else None,
            stdout_path=str(stdout_path),
            stderr_path=str(stderr_path),
            memory_capture=True,  # runners that can keep output off the disk do
            stop_signal=config.stop_signum(),
            stop_grace=config.stop_grace,
            config=_render_config(config.runner.config, instance) if not script else {},
            color=instance.color if service.blue_green else "",
        )

    def instance_ports(self, instance: InstanceRuntime) -> dict[str, int]:
        """The first instance takes the configured ports (of its colour, for blue-green);
        the others, and a port configured as 0, get free ports the daemon picks once and
        keeps while it can."""
        configured = instance.service.config.ports("green" if instance.color == "green" else "blue")
        wanted = configured if instance.index == 0 else dict.fromkeys(configured, 0)
        if instance.ports.keys() == wanted.keys() and all(
                port in (0, instance.ports[name]) for name, port in wanted.items()):
            return instance.ports  # as picked before (or as configured)
        return {name: port or _free_port() for name, port in wanted.items()}

    @staticmethod
    def picks_ports(instance: InstanceRuntime) -> bool:
        """Whether the daemon picks some of the instance's ports (it picks others when
        those are taken)."""
        return instance.index > 0 or 0 in instance.service.config.ports().values()

    def environment(self, instance: InstanceRuntime) -> dict[str, str]:
        """Layers, lowest first: the daemon's environment, what used services provide,
        the service's own (global, then service), then Hive's variables."""
        return self._environment(instance)[0]

    def _environment(self, instance: InstanceRuntime) -> tuple[dict[str, str], frozenset[str]]:
        """The environment (see :meth:`environment`) and the names the service sets in
        it itself (all but the daemon's own)."""
        service = instance.service
        configured = configured_environment(
            service.project, service.config, ports=instance.ports, uses=instance.uses_ports
        )
        hive = {
            "HIVE_SERVICE_FQN": service.fqn,
            "HIVE_SOURCE_NAME": service.source,
            "HIVE_SERVICE_NAME": service.name,
            "HIVE_INSTANCE": str(instance.index),
        }
        env = {**self.base_env, **instance.injected, **configured, **hive}
        return env, frozenset(instance.injected) | frozenset(configured) | frozenset(hive)

    def health_env(self, instance: InstanceRuntime) -> dict[str, str]:
        """The environment of cmd health checks: the service's own (built again rather
        than kept per instance for the instance's whole life)."""
        try:
            return self.environment(instance)
        except RuntimeTemplateError:
            return self.base_env

    def hook_env(self, instance: InstanceRuntime) -> dict[str, str]:
        """What hooks and builds run with: the service's environment, then Hive's
        variables about the instance (its rollout, one HIVE_PORT_<NAME> per port)."""
        config = instance.service.config
        env = self.environment(instance)
        env.pop(MARKER_ENV, None)
        env["HIVE_ROLLOUT_TYPE"] = config.rollout.type if config.rollout else "none"
        # Blue-green generations alternate between the blue and the green ports; others have no colour.
        env["HIVE_ROLLOUT_COLOR"] = instance.color if instance.service.blue_green else ""
        for name, port in instance.ports.items():
            env[f"HIVE_PORT_{name.upper()}"] = str(port)
        return env

    # --- hooks and builds -------------------------------------------------------------

    async def prepare_start(self, instance: InstanceRuntime) -> str | None:
        """The service's pre-up hooks and its build; why the start must not go on, if so."""
        config = instance.service.config
        if config.hooks.pre_up:
            outcome = await self.run_hooks(instance, "pre-up", config.hooks.pre_up)
            if not outcome.ok:
                return outcome.message
        if config.build is not None:
            result = await self.build(instance, force=False)
            if result is not None and not result.ok:
                return result.message
        return None

    async def build(self, instance: InstanceRuntime, *, force: bool) -> BuildResult | None:
        """Build once for the instances that start together; None when nothing was built."""
        service = instance.service
        build = service.config.build
        if build is None:
            return None
        builds_before = service.builds
        async with service.build_lock:
            if not force and service.builds != builds_before:
                return None  # another instance built it while this one waited
            from ..build import build_needed, run_build  # only projects with builds pay for it

            if not build_needed(build, force=force):
                return None
            script = service.config.runner.script
            result = await run_build(
                build,
                fqn=service.fqn,
                env=self.hook_env(instance),
                output=lambda stream, text: self._captured(instance.fqn, "build", stream, text),
                shell=script.shell if script else None,
                timeout=BUILD_TIMEOUT,
            )
            if result.ok:
                service.builds += 1
            return result

    async def run_hooks(self, instance: InstanceRuntime, event: str, steps: Sequence[HookStep]) -> HookOutcome:
        """The service's hooks for ``event``; their output goes to the instance's logs."""
        from ..hooks import HookOutcome, run_hooks  # only projects with hooks pay for it

        script = instance.service.config.runner.script
        try:
            env = self.hook_env(instance)
        except RuntimeTemplateError as exc:
            return HookOutcome(ok=False, message=f"{event} hook: {exc}")
        return await run_hooks(
            event,
            steps,
            env=env,
            output=lambda stream, text: self._captured(instance.fqn, "hook", stream, text, event),
            shell=script.shell if script else None,
            run_container=self.container_steps(instance.fqn),
        )

    def container_steps(self, fqn: str) -> ContainerStepRunner:
        """Runs hook steps of another runner type than ``script`` (a docker image, a
        compose service) through that runner's ``run_once``, on behalf of ``fqn``."""

        async def run(step: HookStep, env: Mapping[str, str], output: OutputSink, timeout: float) -> int:
            assert step.runner is not None
            runner = self._runners.get(step.runner.type)
            spec = RunSpec(fqn=fqn, env=dict(env), working_dir=step.working_dir,
                           config=dict(step.runner.config), stop_grace=0.0)
            return await runner.run_once(spec, output)

        return run

    def _captured(self, fqn: str, origin: str, stream: str, text: str, event: str = "") -> None:
        """Hook and build output into the service's logs, marked as such."""
        if stream == "hive":
            self._logs.captured(fqn, origin, text)  # already says what it is
        else:
            label = f"{event} hook" if origin == "hook" else "build"
            self._logs.captured(fqn, origin, f"[{label}] {text}")


def config_digest(service: ServiceRuntime) -> str:
    """A short name of the service's effective configuration: ``<hive version>/<hash>``."""
    return f"{__version__}/{hashlib.sha256(service.fingerprint).hexdigest()[:16]}"


def port_in_use(ports: dict[str, int]) -> tuple[int, str] | None:
    """The first configured port something else already listens on."""
    for name, port in ports.items():
        if port <= 0:
            continue
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR: a TIME_WAIT left by our own previous run is not a conflict, a listener is.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return port, name
        finally:
            probe.close()
    return None


def _render_config(value: Any, instance: InstanceRuntime) -> Any:
    """A runner block with its runtime templates resolved (``"{{runtime.port.http}}:80"``)."""
    if isinstance(value, str):
        return render_runtime(value, ports=instance.ports, uses=instance.uses_ports) if "{{" in value else value
    if isinstance(value, dict):
        return {key: _render_config(item, instance) for key, item in value.items()}
    if isinstance(value, list):
        return [_render_config(item, instance) for item in value]
    return value


def _free_port() -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
