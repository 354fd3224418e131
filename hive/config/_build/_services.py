"""One service, built from its sections, and the rules for service names."""

from __future__ import annotations

import re
from typing import Any

from .._issues import KeyPath
from .._model import Duration, RunnerSpec, ServiceConfig
from ._checks import Checks
from ._common import TemplateScope
from ._environment import Environment
from ._exposure import Exposure
from ._hooks import Hooks
from ._lifecycle import Lifecycle
from ._proxy import Proxy
from ._rollout import Rollouts
from ._runner import Runners

__all__ = ["MAX_NAME", "SERVICE_KEYS", "Services", "service_name_problems"]

_NAME_CHARSET_RE = re.compile(r"^[a-z0-9_-]*$")

SERVICE_KEYS = (
    "runner",
    "rollout",
    "proxy",
    "depends_on",
    "healthcheck",
    "environment",
    "build",
    "restart",
    "hooks",
    "expose",
    "uses",
    "stop_signal",
    "stop_grace",
    "watch",
)

# The longest service name: what an FQN may hold (hive_client.validate_name).
MAX_NAME = 128


def service_name_problems(name: str) -> list[str]:
    """The reference reports first-character and charset problems separately."""
    if name == "":
        return ["Service name cannot be empty"]
    problems = []
    if not ("a" <= name[0] <= "z"):
        problems.append("Service name must start with a lowercase letter")
    # Like Hive, the charset check covers the first character too: `Api` gets both errors.
    if _NAME_CHARSET_RE.match(name) is None:
        problems.append(
            "Service name must contain only lowercase letters, numbers, hyphens, and underscores"
        )
    if len(name) > MAX_NAME:
        # Longer names could not be addressed through the API, nor named as log files.
        problems.append(f"Service name is longer than {MAX_NAME} characters")
    return problems


class Services(Hooks, Runners, Rollouts, Proxy, Checks, Lifecycle, Environment, Exposure):
    """``services.NAME``. State: decoder, sink, root, source, sketches."""

    def service(self, name: str, entry: Any) -> ServiceConfig | None:
        path: KeyPath = ("services", name)
        start = self._error_count()
        for problem in service_name_problems(name):
            # `services.` would be a confusing path for the empty name.
            self.sink.error(path if name else ("services",), problem, line_path=path)
        if not self._expect_mapping(entry, path, "a mapping (runner, rollout, ...)"):
            return None
        self.decoder.warn_unknown_keys(entry, SERVICE_KEYS, path)

        uses = self.uses(entry.get("uses", []), (*path, "uses"))
        rollout = None
        rollout_ok = True
        if entry.get("rollout") is not None:
            rollout = self.rollout(entry["rollout"], (*path, "rollout"))
            rollout_ok = rollout is not None
        aliases = {alias for alias in (u.alias() for u in uses or []) if alias}
        port_names = list(rollout.ports) if rollout is not None else ([] if rollout_ok else None)
        scope = TemplateScope(port_names, aliases)

        runner = None
        if "runner" not in entry or entry["runner"] is None:
            self.sink.error((*path, "runner"), "'runner' is required")
        else:
            runner = self.runner(entry["runner"], (*path, "runner"), scope)
        service_dir = (
            runner.script.working_dir if runner is not None and runner.script else self.root
        )
        proxy = self.proxy_endpoints(entry.get("proxy"), (*path, "proxy"), rollout, scope)
        checks = self.healthchecks(entry.get("healthcheck"), (*path, "healthcheck"), scope)
        depends_on = self.depends_on(entry.get("depends_on", []), (*path, "depends_on"))
        environment = self.environment(entry.get("environment"), (*path, "environment"), scope)
        build = None
        if entry.get("build") is not None:
            build = self.build(entry["build"], (*path, "build"), service_dir)
        restart = self.restart(entry.get("restart", "never"), (*path, "restart"))
        hooks = self.hooks(entry.get("hooks"), (*path, "hooks"), service_dir)
        expose = None
        if entry.get("expose") is not None:
            expose = self.expose(entry["expose"], (*path, "expose"), scope)
        stop_signal = self.stop_signal(entry.get("stop_signal", "SIGTERM"), (*path, "stop_signal"))
        stop_grace = self.decoder.decode(
            entry.get("stop_grace", 10.0), Duration, (*path, "stop_grace")
        )
        watch = None
        if entry.get("watch") is not None:
            watch = self.watch(entry["watch"], (*path, "watch"), has_build=build is not None)

        has_proxy = entry.get("proxy") not in (None, [])
        has_checks = entry.get("healthcheck") not in (None, [])
        if has_proxy and entry.get("rollout") is None:
            self.sink.error(path, "rollout is required when proxy is configured (it names the ports to route to)")
        if rollout is not None and rollout.type == "blue-green":
            # Spec S: blue-green needs a health gate and a route to switch.
            if not has_checks:
                self.sink.error((*path, "rollout"), "blue-green rollout requires a healthcheck")
            if not has_proxy:
                self.sink.error((*path, "rollout"), "blue-green rollout requires a proxy")

        if self._error_count() > start:
            # What did decode still takes part in the checks across services, so one run
            # reports a cycle or a port clash along with this service's own errors.
            self.sketches[name] = ServiceConfig(
                name=name, source=self.source, root=self.root, runner=RunnerSpec(type=""),
                rollout=rollout, proxy=proxy or [], depends_on=depends_on or [],
                expose=expose, uses=uses or [],
            )
            return None
        assert runner is not None
        assert uses is not None
        assert stop_signal is not None
        assert stop_grace is not None
        assert proxy is not None
        assert checks is not None
        assert depends_on is not None
        assert environment is not None
        assert restart is not None
        assert hooks is not None
        return ServiceConfig(
            name=name,
            source=self.source,
            root=self.root,
            runner=runner,
            rollout=rollout,
            proxy=proxy,
            depends_on=depends_on,
            healthchecks=checks,
            environment=environment,
            build=build,
            restart=restart,
            hooks=hooks,
            expose=expose,
            uses=uses,
            stop_signal=stop_signal,
            stop_grace=stop_grace,
            watch=watch,
        )
