"""Builds the typed model from interpolated plain data, one section at a time, collecting every
error of the file (a bad service does not hide another one's errors).

A runner's block is the runner's business: it is decoded with the ``Config`` of the runner
registered under its type (see ``_runners``), never with a shape kept here."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from runners.base import RunnerConfig

from ._decode import Decoder, describe, did_you_mean, parse_port
from ._dns import parse_dns_upstream
from ._issues import KeyPath, format_path
from ._model import (
    PROXY_PLUGIN_BLOCKS,
    SSL_BLOCKS,
    BlueGreenSettings,
    BuildSpec,
    CmdCheck,
    Duration,
    EnvironmentSpec,
    EnvProvider,
    ExposeSpec,
    GrpcCheck,
    HealthCheckSpec,
    HiveConfig,
    HooksSpec,
    HookStep,
    HttpCheck,
    MysqlCheck,
    ObservabilitySpec,
    OnHookFailure,
    PluginSpec,
    PortBinding,
    PostgresCheck,
    ProxyDns,
    ProxyEndpoint,
    ProxySettings,
    RedisCheck,
    RestartSpec,
    RolloutSpec,
    RunnerSpec,
    ScriptRunnerConfig,
    ServiceConfig,
    TcpCheck,
    UsesSpec,
    WatchSpec,
    _CheckTiming,
)
from ._runners import installed_runners, runner_schema
from ._shell import missing_shell
from ._templates import check_runtime_templates, is_exact_port_reference

V = TypeVar("V")

_NAME_CHARSET_RE = re.compile(r"^[a-z0-9_-]*$")
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLUGIN_ID_RE = re.compile(r"^hive\.(parse|runner|env|health|rollout|proxy|obs)\.[A-Za-z0-9_.-]+$")

TOP_LEVEL_KEYS = (
    "version",
    "registry_url",
    "defaults",
    "proxy",
    "environment",
    "observability",
    "hooks",
    "services",
)
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
HOOK_EVENTS = ("pre-up", "post-up", "pre-down", "post-down")
RESTART_POLICIES = ("never", "on-failure", "always", "unless-stopped")
KNOWN_ENV_PROVIDERS = ("static", "dotenv", "vault", "1password", "aws-secrets")

# Built-in types whose `{type: X, X: {...}}` block is required (an error when missing).
_RUNNERS_WITH_REQUIRED_BLOCK = frozenset({"script", "docker", "podman", "compose"})
_ROLLOUTS_WITH_REQUIRED_BLOCK = frozenset({"recreate", "blue-green"})
_CHECKS_WITH_REQUIRED_BLOCK = frozenset({"http", "tcp", "cmd", "postgres", "mysql", "redis", "grpc"})
ROLLOUT_TYPES = ("recreate", "blue-green")
HEALTH_TYPES = ("http", "tcp", "cmd", "postgres", "mysql", "redis", "grpc")
_SERVER_CHECKS: dict[str, type[_CheckTiming]] = {
    "postgres": PostgresCheck, "mysql": MysqlCheck, "redis": RedisCheck, "grpc": GrpcCheck,
}
# Hive's proxy plugins: hint candidates (rate-limit and cors are built in: PROXY_PLUGIN_BLOCKS).
PROXY_PLUGIN_TYPES = (
    "auth-api-key", "auth-basic", "auth-jwt", "auth-oidc", "cache", "compress", "cors",
    "headers", "ip-filter", "rate-limit", "rewrite",
)
_RUNNER_PLUGIN_HELP = (
    "a runner plugin is a Python package that registers the name in the 'hive.runners' "
    "entry-point group: pip install it into Hive's environment (docs/runners.md)"
)


def _unknown_type(category: str, type_name: str) -> str | None:
    """Why ``type_name`` cannot be used as a ``category`` type, or None if it can."""
    if category == "runner":
        known = installed_runners(type_name)
        if type_name in known:
            return None
        return (f"unknown runner type '{type_name}'{did_you_mean(type_name, known)}: the installed "
                f"runners are {', '.join(known)}; {_RUNNER_PLUGIN_HELP}")
    if category == "rollout":
        if type_name in ROLLOUT_TYPES:
            return None
        return (f"unknown rollout type '{type_name}'{did_you_mean(type_name, ROLLOUT_TYPES)}: "
                f"Hive has {' and '.join(ROLLOUT_TYPES)} (rollouts take no plugins)")
    if category == "health":
        if type_name in HEALTH_TYPES:
            return None
        if type_name == "mariadb":
            return "unknown health check type 'mariadb': use type: mysql (it checks MariaDB too)"
        return (f"unknown health check type '{type_name}'{did_you_mean(type_name, HEALTH_TYPES)}: "
                f"Hive has {', '.join(HEALTH_TYPES)} (health checks take no plugins)")
    return None


def _provider_problem(provider: str) -> str:
    if provider in KNOWN_ENV_PROVIDERS:
        return (f"environment provider '{provider}' is not implemented by this Hive: put the "
                "values in environment.static, or in a .env file (environment.dotenv)")
    hint = did_you_mean(provider, ("static", "dotenv"))
    return f"unknown environment provider '{provider}'{hint}: Hive has static and dotenv"


def _known_types(category: str) -> tuple[str, ...]:
    if category == "runner":
        return tuple(installed_runners())
    return {"rollout": ROLLOUT_TYPES, "health": HEALTH_TYPES, "proxy": PROXY_PLUGIN_TYPES,
            "ssl": tuple(SSL_BLOCKS)}.get(category, ())


def stray_key_hint(key: str, type_name: str, category: str) -> str:
    """A hint for a key beside ``type`` that is not the type's block. Never offers a name
    that is not a known type: when ``type`` is the typo, the hint is about ``type``."""
    known = _known_types(category)
    if key in known and type_name not in known:
        return f" (did you mean type: {key}?)"
    if type_name in known:
        return did_you_mean(key, [type_name])
    return ""


class _HookStepFields(msgspec.Struct, kw_only=True):
    working_dir: str | None = None
    on_failure: OnHookFailure | None = None
    timeout: Duration = 60.0
    retries: int = 3
    retry_delay: Duration = 5.0
    environment: dict[str, str] = {}


class _ProxyGlobalFields(msgspec.Struct, kw_only=True):
    bind: str | list[str] = "127.0.0.1:8080"
    dns: ProxyDns | None = None
    show_error_logs: bool = True
    debug: bool = False


def resolve_path(root: str, value: str) -> str:
    """A relative path is joined to the project root; an absolute one is kept."""
    return os.path.normpath(os.path.join(root, value))


# The longest service name: what an FQN may hold (hive_client.validate_name).
MAX_NAME = 128
# The longest path the kernel takes (PATH_MAX less its NUL), and the longest name in one.
PATH_MAX = 4095
NAME_MAX = 255


def path_problem(path: str) -> str | None:
    """Why the kernel would refuse ``path`` (ENAMETOOLONG at start, not now), or None."""
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > PATH_MAX:
        return f"path is too long ({len(encoded)} bytes; at most {PATH_MAX})"
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"a name in the path is too long ({len(longest)} bytes; at most {NAME_MAX} per name)"
    return None


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


def _copy_subtree(table: dict[KeyPath, V], source: KeyPath, target: KeyPath) -> None:
    depth = len(source)
    for key_path, value in list(table.items()):
        if key_path[:depth] == source:
            table[(*target, *key_path[depth:])] = value


class TemplateScope:
    """What `{{runtime.port.X}}` / `{{uses.A.port.X}}` may refer to inside one service."""

    def __init__(self, port_names: list[str] | None, aliases: set[str]) -> None:
        self.port_names = port_names  # None: unknown (invalid rollout), so not checked
        self.aliases = aliases


class Builder:
    """Builds sections of one file. ``defaults`` are keyed by plugin id (empty for API input)."""

    def __init__(
        self,
        decoder: Decoder,
        *,
        root: str,
        source: str,
        defaults: Mapping[str, dict[str, Any]] | None = None,
        lines: dict[KeyPath, int] | None = None,
        scalar_text: dict[KeyPath, str] | None = None,
    ) -> None:
        self.decoder = decoder
        self.sink = decoder.sink
        self.root = root
        self.source = source
        self.defaults: Mapping[str, dict[str, Any]] = defaults or {}
        self.lines = lines if lines is not None else {}
        self.scalar_text = scalar_text if scalar_text is not None else {}
        # Every service that built without errors, for cross-service checks on a broken file.
        self.built_services: dict[str, ServiceConfig] = {}
        # Services with errors, holding only the parts that decoded (for those checks).
        self.sketches: dict[str, ServiceConfig] = {}
        self._default_shell_reported = False

    # ---- helpers -------------------------------------------------------------------------

    def _resolve(self, base: str, value: str, path: KeyPath) -> str:
        """``resolve_path``, with an error at ``path`` for a path no start could use."""
        resolved = resolve_path(base, value)
        problem = path_problem(resolved)
        if problem is not None:
            self.sink.error(path, problem)
        return resolved

    def _error_count(self) -> int:
        return len(self.sink.errors)

    def _expect_mapping(self, value: Any, path: KeyPath, what: str = "a mapping") -> bool:
        if isinstance(value, dict):
            return True
        self.sink.error(path, f"expected {what}, got {describe(value)}")
        return False

    def _check_templates(self, value: Any, path: KeyPath, scope: TemplateScope | None) -> None:
        """Runtime templates in every string leaf must name a known port / uses alias."""
        if scope is None:
            return
        if isinstance(value, str):
            errors, warnings = check_runtime_templates(
                value, port_names=scope.port_names, aliases=scope.aliases
            )
            for message in errors:
                self.sink.error(path, message)
            for message in warnings:
                self.sink.warning(path, message)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._check_templates(item, (*path, key), scope)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_templates(item, (*path, index), scope)

    def _check_port_reference(
        self, value: str, path: KeyPath, scope: TemplateScope | None
    ) -> None:
        """Health and proxy ports: digits, or exactly `{{runtime.port.NAME}}`."""
        if value.isdigit() and value.isascii():
            try:
                parse_port(value)
            except ValueError as exc:
                self.sink.error(path, str(exc))
            return
        name = is_exact_port_reference(value)
        if name is None:
            self.sink.error(
                path,
                f"port must be digits or exactly '{{{{runtime.port.NAME}}}}', got {value!r}",
            )
            return
        self._check_templates(value, path, scope)

    def _apply_defaults(
        self, plugin_id: str, block: dict[str, Any], path: KeyPath
    ) -> dict[str, Any]:
        base = self.defaults.get(plugin_id)
        if not base:
            return block
        return self._merge(base, block, ("defaults", plugin_id), path)

    def _merge(
        self, base: dict[str, Any], override: dict[str, Any], base_path: KeyPath, path: KeyPath
    ) -> dict[str, Any]:
        """Deep-merge of mappings, the service value wins; scalars and lists are replaced whole.
        Keys taken from `defaults` keep their lines there, so errors point at them."""
        merged = dict(override)
        for key, base_value in base.items():
            if key not in override:
                merged[key] = base_value
                self._copy_positions((*base_path, key), (*path, key))
            elif isinstance(base_value, dict) and isinstance(override[key], dict):
                merged[key] = self._merge(
                    base_value, override[key], (*base_path, key), (*path, key)
                )
        return merged

    def _copy_positions(self, source: KeyPath, target: KeyPath) -> None:
        _copy_subtree(self.lines, source, target)
        _copy_subtree(self.scalar_text, source, target)

    def _plugin_block(
        self,
        value: Any,
        path: KeyPath,
        *,
        category: str,
        label: str,
        required_blocks: frozenset[str],
        type_required: str,
        missing_block: str,
    ) -> tuple[str, dict[str, Any]] | None:
        """The `{type: X, X: {...}}` pattern, with `defaults[hive.<category>.X]` merged into the
        X block. Returns (type, block) or None after reporting."""
        if not self._expect_mapping(value, path, "a mapping like {type: X, X: {...}}"):
            return None
        if "type" not in value:
            self.sink.error((*path, "type"), "'type' is required")
            return None
        type_name = value["type"]
        if not isinstance(type_name, str):
            self.sink.error((*path, "type"), f"expected a string, got {describe(type_name)}")
            return None
        if type_name == "":
            self.sink.error((*path, "type"), type_required)
            return None
        for key in value:
            if key not in ("type", type_name):
                self.sink.warning(
                    (*path, key),
                    f"ignored: the {label} type is '{type_name}'{stray_key_hint(key, type_name, category)}",
                )
        unknown = _unknown_type(category, type_name)
        if unknown is not None:
            self.sink.error((*path, "type"), unknown)
            return None
        block = value.get(type_name)
        if block is None:
            if type_name in required_blocks:
                self.sink.error(path, missing_block.format(t=type_name))
                return None
            self.sink.warning(
                path,
                f"Missing '{type_name}' configuration for {type_name} {label} (may be auto-installed)",
            )
            return type_name, {}
        if not self._expect_mapping(block, (*path, type_name)):
            return None
        return type_name, self._apply_defaults(
            f"hive.{category}.{type_name}", block, (*path, type_name)
        )

    # ---- top level -----------------------------------------------------------------------

    def config(self, data: dict[str, Any]) -> HiveConfig | None:
        start = self._error_count()
        self.defaults = self.defaults_section(data.get("defaults"))
        for key in data:
            if key not in TOP_LEVEL_KEYS and not key.startswith("x-"):
                self.decoder.warn_unknown_key((key,), TOP_LEVEL_KEYS)
        registry_url = None
        if data.get("registry_url") is not None:
            registry_url = self.decoder.decode(data["registry_url"], str, ("registry_url",))
        environment = self.environment(data.get("environment"), ("environment",), None)
        proxy = self.proxy_settings(data.get("proxy"), ("proxy",))
        observability = None
        if data.get("observability") is not None:
            observability = self.decoder.decode(
                data["observability"], ObservabilitySpec, ("observability",)
            )
        hooks = self.hooks(data.get("hooks"), ("hooks",), self.root)
        services = self.built_services
        if "services" not in data:
            self.sink.error(("services",), "'services' is required")
        elif self._expect_mapping(data["services"], ("services",), "a mapping of services"):
            for name, entry in data["services"].items():
                service = self.service(name, entry)
                if service is not None:
                    services[name] = service
        if self._error_count() > start:
            return None
        return HiveConfig(
            version="1",
            registry_url=registry_url,
            defaults=dict(self.defaults),
            proxy=proxy or ProxySettings(),
            environment=environment or EnvironmentSpec(),
            observability=observability,
            hooks=hooks or HooksSpec(),
            services=services,
        )

    def defaults_section(self, value: Any) -> dict[str, dict[str, Any]]:
        path: KeyPath = ("defaults",)
        if value is None:
            return {}
        if not self._expect_mapping(value, path, "a mapping of plugin ids to settings"):
            return {}
        result: dict[str, dict[str, Any]] = {}
        for plugin_id, settings in value.items():
            if _PLUGIN_ID_RE.match(plugin_id) is None:
                self.sink.warning(
                    (*path, plugin_id),
                    f"'{plugin_id}' is not a plugin id of the form hive.<category>.<type> "
                    "(category: parse, runner, env, health, rollout, proxy, obs)",
                )
            if settings is None:
                continue
            if self._expect_mapping(settings, (*path, plugin_id)):
                result[plugin_id] = settings
        return result

    def proxy_settings(self, value: Any, path: KeyPath) -> ProxySettings | None:
        if value is None:
            return ProxySettings()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        plain = {key: item for key, item in value.items() if key not in ("ssl", "plugins")}
        fields = self.decoder.decode(plain, _ProxyGlobalFields, path, extra_keys=("ssl", "plugins"))
        ssl = None
        if value.get("ssl") is not None:
            ssl = self.ssl_spec(value["ssl"], (*path, "ssl"))
        plugins = self.plugin_list(value.get("plugins"), (*path, "plugins"))
        if fields is not None and fields.dns is not None and fields.dns.upstream is not None:
            try:
                parse_dns_upstream(fields.dns.upstream)
            except ValueError as exc:
                self.sink.error((*path, "dns", "upstream"), str(exc))
        if fields is None or self._error_count() > start:
            return None
        bind = [fields.bind] if isinstance(fields.bind, str) else list(fields.bind)
        return ProxySettings(
            bind=bind,
            ssl=ssl,
            dns=fields.dns,
            plugins=plugins or [],
            show_error_logs=fields.show_error_logs,
            debug=fields.debug,
        )

    def ssl_spec(self, value: Any, path: KeyPath) -> PluginSpec | None:
        """``{type: files, files: {cert, key}}`` (paths from the project's root) or
        ``{type: internal}``."""
        spec = self.plugin_spec(value, path, "ssl")
        if spec is None:
            return None
        if spec.type not in SSL_BLOCKS:
            self.sink.error((*path, "type"), f"unknown ssl type '{spec.type}'{did_you_mean(spec.type, SSL_BLOCKS)}"
                            f" (known: {', '.join(SSL_BLOCKS)})")
            return None
        if spec.type == "files":
            config = {key: self._resolve(self.root, str(spec.config[key]), (*path, "files", key))
                      for key in ("cert", "key")}
            return PluginSpec(type=spec.type, config=config, skip=spec.skip)
        return spec

    def plugin_spec(self, value: Any, path: KeyPath, category: str = "proxy") -> PluginSpec | None:
        """A proxy/ssl plugin: `{type: X, X: {...}, skip: bool}`."""
        if not self._expect_mapping(value, path, "a mapping like {type: X, X: {...}}"):
            return None
        type_name = value.get("type")
        if not isinstance(type_name, str) or not type_name:
            self.sink.error((*path, "type"), "'type' is required")
            return None
        for key in value:
            if key not in ("type", type_name, "skip"):
                hint = stray_key_hint(key, type_name, category) or did_you_mean(key, ("type", "skip"))
                self.sink.warning((*path, key), f"unknown key '{key}'{hint}")
        config = value.get(type_name)
        if config is None:
            config = {}
        elif not self._expect_mapping(config, (*path, type_name)):
            return None
        skip = value.get("skip", False)
        if not isinstance(skip, bool):
            self.sink.error(
                (*path, "skip"), f"expected a boolean (true/false), got {describe(skip)}"
            )
            return None
        block = {"proxy": PROXY_PLUGIN_BLOCKS, "ssl": SSL_BLOCKS}.get(category, {}).get(type_name)
        if block is not None and self.decoder.decode(config, block, (*path, type_name)) is None:
            return None
        return PluginSpec(type=type_name, config=config, skip=skip)

    def plugin_list(self, value: Any, path: KeyPath) -> list[PluginSpec] | None:
        if value is None:
            return []
        if not isinstance(value, list):
            self.sink.error(path, f"expected a list, got {describe(value)}")
            return None
        specs = [self.plugin_spec(item, (*path, index)) for index, item in enumerate(value)]
        return [spec for spec in specs if spec is not None] if None not in specs else None

    # ---- environment ---------------------------------------------------------------------

    def environment(
        self, value: Any, path: KeyPath, scope: TemplateScope | None
    ) -> EnvironmentSpec | None:
        if value is None:
            return EnvironmentSpec()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        static: dict[str, str] = {}
        providers: list[EnvProvider] = []
        for provider, settings in value.items():
            provider_path = (*path, provider)
            if provider == "static":
                static = self._static_env(settings, provider_path, scope)
                continue
            if provider != "dotenv":
                self.sink.error(provider_path, _provider_problem(provider))
                continue
            if settings is None:
                settings = {}
            if not self._expect_mapping(settings, provider_path):
                continue
            settings = self._apply_defaults(f"hive.env.{provider}", settings, provider_path)
            if provider == "dotenv":
                files = self._dotenv_files(settings, provider_path)
                if files is not None:
                    providers.append(EnvProvider(type="dotenv", config={"files": files}))
            else:
                providers.append(EnvProvider(type=provider, config=settings))
        if self._error_count() > start:
            return None
        return EnvironmentSpec(static=static, providers=providers)

    def _static_env(
        self, value: Any, path: KeyPath, scope: TemplateScope | None
    ) -> dict[str, str]:
        if value is None or not self._expect_mapping(value, path):
            return {}
        static: dict[str, str] = {}
        for key, item in value.items():
            item_path = (*path, key)
            if key == "" or "=" in key or "\0" in key:
                self.sink.error(item_path, f"invalid environment variable name {key!r}")
                continue
            # A C-written `PORT: 8080` is unambiguous: it means the text "8080".
            text = self.decoder.scalar_as_text(item, item_path, allow_bool=True)
            if not isinstance(text, str):
                self.sink.error(item_path, f"expected a string, got {describe(text)}")
                continue
            if "\0" in text:
                self.sink.error(item_path, "environment values cannot contain NUL characters")
                continue
            self._check_templates(text, item_path, scope)
            static[key] = text
        return static

    def _dotenv_files(self, settings: dict[str, Any], path: KeyPath) -> list[str] | None:
        self.decoder.warn_unknown_keys(settings, ("files", "file"), path)
        if "files" in settings and "file" in settings:
            self.sink.error(path, "use either 'files' or 'file', not both")
            return None
        names: Any = [".env"]
        keys: list[KeyPath] = [path]
        if settings.get("files") is not None:
            names = self.decoder.decode(settings["files"], list[str], (*path, "files"))
            keys = [(*path, "files", index) for index in range(len(names or []))]
        elif settings.get("file") is not None:
            name = self.decoder.decode(settings["file"], str, (*path, "file"))
            names = None if name is None else [name]
            keys = [(*path, "file")]
        if names is None:
            return None
        return [self._resolve(self.root, name, key) for name, key in zip(names, keys, strict=True)]

    # ---- services ------------------------------------------------------------------------

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

    def runner(self, value: Any, path: KeyPath, scope: TemplateScope | None) -> RunnerSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="runner",
            label="runner",
            required_blocks=_RUNNERS_WITH_REQUIRED_BLOCK,
            type_required="Runner type is required",
            missing_block="Missing '{t}' configuration for {t} runner",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        start = self._error_count()
        # The model types the script block for the daemon (RunnerSpec.script).
        schema = ScriptRunnerConfig if type_name == "script" else runner_schema(type_name)
        config: dict[str, Any] = block
        script = None
        if schema is not None:
            decoded = self.decoder.decode_with_data(block, schema, block_path)
            if decoded is not None:
                typed, config = decoded
                self._runner_problems(typed, block_path)
                if isinstance(typed, ScriptRunnerConfig):
                    script = msgspec.structs.replace(
                        typed,
                        working_dir=self._resolve(
                            self.root, typed.working_dir, (*block_path, "working_dir")
                        ),
                        shell=self._script_shell(typed.shell, value[type_name], block_path),
                    )
        self._check_templates(block, block_path, scope)
        if self._error_count() > start:
            return None
        return RunnerSpec(type=type_name, config=config, script=script)

    def _script_shell(self, shell: str | None, own: dict[str, Any], path: KeyPath) -> str | None:
        """The shell a script block runs with (see :mod:`._shell`): a missing one is an error
        when the block names it, a warning (once) and dropped when it comes from defaults."""
        if shell is None:
            return None
        problem = missing_shell(shell, self.root)
        if problem is None:
            return shell
        if "shell" in own:
            self.sink.error((*path, "shell"), f"{problem}: install it, or leave 'shell' out "
                            "(commands then run directly, or under $SHELL or /bin/sh)")
            return shell
        if not self._default_shell_reported:
            self._default_shell_reported = True
            self.sink.warning(("defaults", "hive.runner.script", "shell"), f"{problem}: script "
                              "services run their commands without it (directly, or under $SHELL "
                              "or /bin/sh), as Hive's original does; install it to use it")
        return None

    def _runner_problems(self, config: msgspec.Struct, path: KeyPath) -> None:
        """What a runner's Config says is wrong beyond its types (``RunnerConfig.check``)."""
        if not isinstance(config, RunnerConfig):
            return
        for problem in config.check():
            report = self.sink.warning if problem.warning else self.sink.error
            report((*path, *problem.path), problem.message)

    def rollout(self, value: Any, path: KeyPath) -> RolloutSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="rollout",
            label="rollout",
            required_blocks=_ROLLOUTS_WITH_REQUIRED_BLOCK,
            type_required="Rollout type is required",
            missing_block="Missing '{t}' configuration",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        start = self._error_count()
        settings = None
        if type_name == "recreate":
            self.decoder.warn_unknown_keys(block, ("ports",), block_path)
            ports = self._rollout_ports(block, block_path, blue_green=False)
        elif type_name == "blue-green":
            rest = {key: item for key, item in block.items() if key != "ports"}
            settings = self.decoder.decode(
                rest, BlueGreenSettings, block_path, extra_keys=("ports",)
            )
            ports = self._rollout_ports(block, block_path, blue_green=True)
        else:
            ports = self._plugin_rollout_ports(block)
        if ports is None or self._error_count() > start:
            return None
        return RolloutSpec(type=type_name, config=block, ports=ports, blue_green=settings)

    def _rollout_ports(
        self, block: dict[str, Any], path: KeyPath, *, blue_green: bool
    ) -> dict[str, PortBinding] | None:
        ports_path = (*path, "ports")
        if block.get("ports") is None:
            self.sink.error(ports_path, "'ports' is required")
            return None
        if not self._expect_mapping(block["ports"], ports_path, "a mapping of port names to ports"):
            return None
        result: dict[str, PortBinding] = {}
        for name, value in block["ports"].items():
            port_path = (*ports_path, name)
            if IDENTIFIER_RE.match(name) is None:
                self.sink.warning(
                    port_path,
                    f"port name '{name}' cannot be used in {{{{runtime.port.NAME}}}} "
                    "(use letters, digits and '_')",
                )
            if isinstance(value, dict):
                self.decoder.warn_unknown_keys(value, ("blue", "green"), port_path)
                blue = self._port(value, "blue", port_path)
                green = (
                    self._port(value, "green", port_path)
                    if blue_green or "green" in value
                    else None
                )
                if blue is None or (blue_green and green is None):
                    continue
                if blue_green and blue == green:
                    self.sink.error(
                        port_path, f"blue and green must be different ports (both are {blue})"
                    )
                    continue
                # Recreate accepts {blue, green} (a C-written config) and runs on blue.
                result[name] = PortBinding(blue=blue, green=green if blue_green else None)
            elif blue_green:
                self.sink.error(
                    port_path,
                    f"a blue-green port needs both colours, e.g. {{blue: {value}, green: <port>}}",
                )
            else:
                try:
                    result[name] = PortBinding(blue=parse_port(value))
                except ValueError as exc:
                    self.sink.error(port_path, str(exc))
        return result

    def _port(self, mapping: dict[str, Any], key: str, path: KeyPath) -> int | None:
        if mapping.get(key) is None:
            self.sink.error((*path, key), f"'{key}' is required")
            return None
        try:
            return parse_port(mapping[key])
        except ValueError as exc:
            self.sink.error((*path, key), str(exc))
            return None

    @staticmethod
    def _plugin_rollout_ports(block: dict[str, Any]) -> dict[str, PortBinding]:
        """Other rollout types: the integer values under `<type>.ports` (others are the plugin's)."""
        ports = block.get("ports")
        if not isinstance(ports, dict):
            return {}
        result: dict[str, PortBinding] = {}
        for name, value in ports.items():
            try:
                result[name] = PortBinding(blue=parse_port(value))
            except ValueError:
                continue
        return result

    def proxy_endpoints(
        self,
        value: Any,
        path: KeyPath,
        rollout: RolloutSpec | None,
        scope: TemplateScope,
    ) -> list[ProxyEndpoint] | None:
        if value is None:
            return []
        if isinstance(value, dict):
            entries: list[tuple[Any, KeyPath]] = [(value, path)]
        elif isinstance(value, list):
            entries = [(item, (*path, index)) for index, item in enumerate(value)]
        else:
            self.sink.error(
                path, f"expected an endpoint mapping or a list of them, got {describe(value)}"
            )
            return None
        endpoints = [
            self.proxy_endpoint(item, item_path, rollout, scope) for item, item_path in entries
        ]
        if None in endpoints:
            return None
        return [endpoint for endpoint in endpoints if endpoint is not None]

    def proxy_endpoint(
        self, value: Any, path: KeyPath, rollout: RolloutSpec | None, scope: TemplateScope
    ) -> ProxyEndpoint | None:
        if not self._expect_mapping(value, path, "an endpoint mapping (host, path, port)"):
            return None
        start = self._error_count()
        plain = {key: item for key, item in value.items() if key != "plugins"}
        if plain.get("path") is None:
            self.sink.error((*path, "path"), "Path is required")
            plain["path"] = "/"  # reported; decode the rest for its own errors
        endpoint = self.decoder.decode(plain, ProxyEndpoint, path, extra_keys=("plugins",))
        plugins = self.plugin_list(value.get("plugins"), (*path, "plugins"))
        if endpoint is not None:
            if endpoint.path == "":
                self.sink.error((*path, "path"), "Path is required")
            elif not endpoint.path.startswith("/"):
                self.sink.error((*path, "path"), "Path must start with '/'")
            if endpoint.host is not None and endpoint.host.lower().startswith(
                ("http://", "https://")
            ):
                self.sink.error(
                    (*path, "host"), "Host must not include protocol (no http:// or https://)"
                )
        if endpoint is None or plugins is None or self._error_count() > start:
            return None
        port = endpoint.port
        if port:
            self._check_port_reference(port, (*path, "port"), scope)
        elif rollout is not None:
            port = self._default_proxy_port(rollout, path)
        if self._error_count() > start:
            return None
        return msgspec.structs.replace(endpoint, port=port, plugins=plugins)

    def _default_proxy_port(self, rollout: RolloutSpec, path: KeyPath) -> str:
        """An endpoint without `port` routes to the `http` port, or to the only port."""
        if "http" in rollout.ports:
            return "{{runtime.port.http}}"
        if len(rollout.ports) == 1:
            return f"{{{{runtime.port.{next(iter(rollout.ports))}}}}}"
        names = ", ".join(rollout.ports) or "none"
        self.sink.error(
            (*path, "port"), f"'port' is required: the service has no 'http' port (ports: {names})"
        )
        return ""

    def healthchecks(
        self, value: Any, path: KeyPath, scope: TemplateScope
    ) -> list[HealthCheckSpec] | None:
        if value is None:
            return []
        if isinstance(value, dict):
            entries: list[tuple[Any, KeyPath]] = [(value, path)]
        elif isinstance(value, list):
            entries = [(item, (*path, index)) for index, item in enumerate(value)]
        else:
            self.sink.error(
                path, f"expected a check mapping or a list of them, got {describe(value)}"
            )
            return None
        checks = [self.healthcheck(item, item_path, scope) for item, item_path in entries]
        if None in checks:
            return None
        return [check for check in checks if check is not None]

    def healthcheck(
        self, value: Any, path: KeyPath, scope: TemplateScope
    ) -> HealthCheckSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="health",
            label="health check",
            required_blocks=_CHECKS_WITH_REQUIRED_BLOCK,
            type_required="Health check type is required",
            missing_block="Missing '{t}' configuration",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        http = tcp = cmd = None
        servers: dict[str, Any] = {}
        timing: _CheckTiming | None
        if type_name == "http":
            timing = http = self.decoder.decode(block, HttpCheck, block_path)
        elif type_name == "tcp":
            timing = tcp = self.decoder.decode(block, TcpCheck, block_path)
        elif type_name == "cmd":
            timing = cmd = self.decoder.decode(block, CmdCheck, block_path)
            if cmd is not None and not cmd.command.strip():
                self.sink.error((*block_path, "command"), "'command' is required")
                return None
            if cmd is not None:
                cmd = msgspec.structs.replace(
                    cmd,
                    working_dir=self._resolve(self.root, cmd.working_dir, (*block_path, "working_dir")),
                )
        elif type_name in _SERVER_CHECKS:
            timing = self.decoder.decode(block, _SERVER_CHECKS[type_name], block_path)
            servers[type_name] = timing
        else:
            timing = self.decoder.decode(block, _CheckTiming, block_path, warn_unknown=False)
        if timing is None:
            return None
        port_check = http or tcp or servers.get(type_name)
        if port_check is not None:
            if not port_check.port:
                self.sink.error((*block_path, "port"), "'port' is required")
                return None
            start = self._error_count()
            self._check_port_reference(port_check.port, (*block_path, "port"), scope)
            if self._error_count() > start:
                return None
        return HealthCheckSpec(
            type=type_name,
            config=block,
            interval=timing.interval,
            timeout=timing.timeout,
            retries=timing.retries,
            start_period=timing.start_period,
            http=http,
            tcp=tcp,
            cmd=cmd,
            **servers,
        )

    def depends_on(self, value: Any, path: KeyPath) -> list[str] | None:
        names = self.decoder.decode(value, list[str], path)
        if names is None:
            return None
        seen: set[str] = set()
        unique: list[str] = []
        for index, name in enumerate(names):
            if name in seen:
                self.sink.warning((*path, index), f"'{name}' is listed twice")
                continue
            seen.add(name)
            unique.append(name)
        return unique

    def build(self, value: Any, path: KeyPath, service_dir: str) -> BuildSpec | None:
        spec = self.decoder.decode(value, BuildSpec, path)
        if spec is None:
            return None
        if not spec.command.strip():
            self.sink.error((*path, "command"), "'command' is required")
            return None
        # Spec S: the build runs in its own working_dir, else the runner's, else the root.
        build_dir = (
            self._resolve(self.root, spec.working_dir, (*path, "working_dir"))
            if "working_dir" in value
            else service_dir
        )
        output = self._resolve(build_dir, spec.output, (*path, "output")) if spec.output else None
        return msgspec.structs.replace(spec, working_dir=build_dir, output=output)

    def watch(self, value: Any, path: KeyPath, *, has_build: bool) -> WatchSpec | None:
        """Paths resolved against the root; `rebuild` needs the build it runs."""
        if isinstance(value, (str, list)):  # `watch: src` or `watch: [src, lib]`: paths alone
            value = {"paths": [value] if isinstance(value, str) else value}
        spec = self.decoder.decode(value, WatchSpec, path)
        if spec is None:
            return None
        if not spec.paths:
            self.sink.error((*path, "paths"), "no paths: leave 'paths' out to watch the project root")
            return None
        if spec.action == "rebuild" and not has_build:
            self.sink.error((*path, "action"),
                            "action 'rebuild' runs the service's build, and it has none: add a 'build' "
                            "(command: ...) or use action 'restart'")
            return None
        paths = [self._resolve(self.root, entry, (*path, "paths")) for entry in spec.paths]
        return msgspec.structs.replace(spec, paths=paths)

    def restart(self, value: Any, path: KeyPath) -> RestartSpec | None:
        if isinstance(value, str):
            if value not in RESTART_POLICIES:
                self.sink.error(
                    path,
                    f"invalid restart policy {value!r}: expected one of "
                    f"{', '.join(RESTART_POLICIES)}{did_you_mean(value, RESTART_POLICIES)}",
                )
                return None
            return RestartSpec(policy=value)  # type: ignore[arg-type]
        if isinstance(value, dict):
            if "policy" not in value:
                self.sink.error((*path, "policy"), "'policy' is required")
                return None
            spec = self.decoder.decode(value, RestartSpec, path)
            if spec is None:
                return None
            if (
                spec.delay is not None
                and spec.max_delay is not None
                and spec.delay > spec.max_delay
            ):
                self.sink.error((*path, "delay"), "delay must not be larger than max_delay")
                return None
            return spec
        self.sink.error(
            path,
            f"expected a policy ({', '.join(RESTART_POLICIES)}) or a mapping "
            f"{{policy, delay, max_delay, reset_after, jitter}}, got {describe(value)}",
        )
        return None

    def stop_signal(self, value: Any, path: KeyPath) -> str | None:
        """Normalises TERM, SIGTERM or 15 to "SIGTERM"."""
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.sink.error(path, f"expected a signal name or number, got {describe(value)}")
            return None
        if isinstance(value, int):
            try:
                return signal.Signals(value).name
            except ValueError:
                self.sink.error(path, f"unknown signal number {value}")
                return None
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name in signal.Signals.__members__ and not name.startswith("SIG_"):
            return signal.Signals[name].name
        self.sink.error(path, f"unknown signal {value!r} (e.g. SIGTERM, TERM, SIGINT, 15)")
        return None

    # ---- hooks ---------------------------------------------------------------------------

    def hooks(self, value: Any, path: KeyPath, default_dir: str) -> HooksSpec | None:
        if value is None:
            return HooksSpec()
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        events: dict[str, list[HookStep]] = {}
        for event, steps in value.items():
            event_path = (*path, event)
            if event not in HOOK_EVENTS:
                self.decoder.warn_unknown_key(event_path, HOOK_EVENTS)
                continue
            if steps is None:
                continue
            if not isinstance(steps, list):
                self.sink.error(event_path, f"expected a list of steps, got {describe(steps)}")
                continue
            on_failure: OnHookFailure = "abort" if event in ("pre-up", "post-up") else "warn"
            built = [
                self.hook_step(step, (*event_path, index), on_failure, default_dir)
                for index, step in enumerate(steps)
            ]
            events[event.replace("-", "_")] = [step for step in built if step is not None]
        if self._error_count() > start:
            return None
        return HooksSpec(**events)

    def hook_step(
        self, value: Any, path: KeyPath, inherited_on_failure: OnHookFailure, default_dir: str
    ) -> HookStep | None:
        if not self._expect_mapping(value, path, "a step mapping (run, runner or parallel)"):
            return None
        type_name = value.get("type")
        flat_script = type_name == "script" and "run" in value
        kinds = [key for key in ("run", "runner", "parallel", "type") if key in value]
        count = len(kinds) - (1 if flat_script else 0)
        if count == 0:
            self.sink.error(
                path, "Hook step must have exactly one of: run, runner, parallel, or type"
            )
            return None
        if count > 1:
            self.sink.error(
                path,
                "Hook step must have exactly one of: run, runner, parallel, or type "
                f"(found {count})",
            )
            return None
        extra_keys = ["run", "runner", "parallel", "type"]
        if isinstance(type_name, str):
            extra_keys.append(type_name)
        common_keys = {key: item for key, item in value.items() if key not in extra_keys}
        fields = self.decoder.decode(common_keys, _HookStepFields, path, extra_keys=extra_keys)
        if fields is None:
            return None
        on_failure = fields.on_failure or inherited_on_failure
        working_dir = (
            self._resolve(self.root, fields.working_dir, (*path, "working_dir"))
            if fields.working_dir
            else default_dir
        )
        common: dict[str, Any] = {
            "working_dir": working_dir,
            "on_failure": on_failure,
            "timeout": fields.timeout,
            "retries": fields.retries,
            "retry_delay": fields.retry_delay,
            "environment": fields.environment,
        }
        if "run" in value:
            run = self.decoder.decode(value["run"], str, (*path, "run"))
            if run is None:
                return None
            if not run.strip():
                self.sink.error((*path, "run"), "'run' is required")
                return None
            return HookStep(kind="run", run=run, **common)
        if "parallel" in value:
            return self._parallel_step(value["parallel"], path, on_failure, working_dir, common)
        if "runner" in value:
            runner = self.runner(value["runner"], (*path, "runner"), None)
            return None if runner is None else HookStep(kind="runner", runner=runner, **common)
        # Flat form `{type: docker, docker: {...}}`.
        if not isinstance(type_name, str) or not type_name:
            self.sink.error((*path, "type"), "'type' must be a runner type")
            return None
        if type_name == "script":
            self.sink.error(path, "Hook step with type 'script' must have a 'run' field")
            return None
        if value.get(type_name) is None:
            self.sink.error(
                path, f"Hook step with type '{type_name}' must have a '{type_name}' config section"
            )
            return None
        runner = self.runner({"type": type_name, type_name: value[type_name]}, path, None)
        return None if runner is None else HookStep(kind="runner", runner=runner, **common)

    def _parallel_step(
        self,
        value: Any,
        path: KeyPath,
        on_failure: OnHookFailure,
        working_dir: str,
        common: dict[str, Any],
    ) -> HookStep | None:
        if on_failure == "retry":
            self.sink.error(
                (*path, "on_failure"), "on_failure: retry is not available for parallel groups"
            )
            return None
        if not isinstance(value, list):
            self.sink.error((*path, "parallel"), f"expected a list of steps, got {describe(value)}")
            return None
        # Children inherit the group's on_failure (spec S).
        children = [
            self.hook_step(step, (*path, "parallel", index), on_failure, working_dir)
            for index, step in enumerate(value)
        ]
        if None in children:
            return None
        return HookStep(kind="parallel", parallel=[c for c in children if c is not None], **common)

    # ---- exposure ------------------------------------------------------------------------

    def expose(self, value: Any, path: KeyPath, scope: TemplateScope) -> ExposeSpec | None:
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        if not value.get("name"):
            self.sink.error((*path, "name"), "Expose name is required")
        if not value.get("vars"):
            self.sink.error((*path, "vars"), "At least one variable is required")
        if self._error_count() > start:
            self.decoder.warn_unknown_keys(value, ("name", "secret", "vars"), path)
            return None
        spec = self.decoder.decode(value, ExposeSpec, path)
        if spec is None:
            return None
        self._check_templates(spec.vars, (*path, "vars"), scope)
        return None if self._error_count() > start else spec

    def uses(self, value: Any, path: KeyPath) -> list[UsesSpec] | None:
        if value is None:
            self.sink.error(path, "expected a list, got null")
            return None
        if not isinstance(value, list):
            self.sink.error(path, f"expected a list, got {describe(value)}")
            return None
        start = self._error_count()
        result: list[UsesSpec] = []
        aliases: dict[str, int] = {}
        for index, item in enumerate(value):
            item_path = (*path, index)
            if isinstance(item, dict) and not item.get("name"):
                self.sink.error((*item_path, "name"), "Uses name is required")
                continue
            spec = self.decoder.decode(item, UsesSpec, item_path)
            if spec is None:
                continue
            if spec.as_ is not None and IDENTIFIER_RE.match(spec.as_) is None:
                self.sink.error(
                    (*item_path, "as"),
                    f"alias {spec.as_!r} must be an identifier (letters, digits, '_')",
                )
                continue
            alias = spec.alias()
            if alias is not None:
                if alias in aliases:
                    self.sink.error(
                        item_path,
                        f"alias '{alias}' is already used by {format_path((*path, aliases[alias]))}",
                    )
                    continue
                aliases[alias] = index
            result.append(spec)
        return None if self._error_count() > start else result
