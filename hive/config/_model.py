"""Typed model of a ``hive.yaml`` (version "1"). All Structs are frozen values.

Durations are float seconds, ports ints, paths absolute strings (resolved against the project
root). Fields marked with ``_DURATION``/``_PORT``/``_SIZE`` metadata are normalised by the
decoder before msgspec sees them.
"""

from __future__ import annotations

import signal
from typing import Annotated, Any, Literal

import msgspec

from runners.script import ScriptConfig

# The decoder reads these markers (msgspec.inspect Metadata.extra) to parse "10s", "8080", "1MB".
_DURATION = msgspec.Meta(extra={"hive": "duration"})
_PORT = msgspec.Meta(extra={"hive": "port"})
_SIZE = msgspec.Meta(extra={"hive": "size"})

Duration = Annotated[float, _DURATION]
Port = Annotated[int, _PORT]
ByteSize = Annotated[int, _SIZE]

RestartPolicy = Literal["never", "on-failure", "always", "unless-stopped"]
OnHookFailure = Literal["abort", "warn", "retry"]


# ---- runners -------------------------------------------------------------------------------

# The script runner's block, defined by the runner (runners.script); in RunnerSpec.script its
# ``working_dir`` is absolute (default: the project root).
ScriptRunnerConfig = ScriptConfig


class RunnerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """``{type: X, X: {...}}``. ``config`` is the X block after defaults merging and
    interpolation, as checked against the runner's ``Config``: unknown keys left out, numbers
    written for string fields as their text (a runner without a Config gets it as written).
    ``script`` is its typed form for ``type: script``."""

    type: str
    config: dict[str, Any] = {}
    script: ScriptRunnerConfig | None = None


# ---- rollout -------------------------------------------------------------------------------


class PortBinding(msgspec.Struct, frozen=True, kw_only=True):
    """One named port. ``green`` is set only for blue-green rollouts."""

    blue: int
    green: int | None = None


class BlueGreenSettings(msgspec.Struct, frozen=True, kw_only=True):
    """``timeout``: how long the new generation has to become healthy; ``healthy_duration``:
    after the switch, the window in which its failing health rolls back; ``drain``: how
    long the old generation finishes what it has after the switch (docs/proxy.md)."""

    healthy_duration: Duration = 10.0
    timeout: Duration = 60.0
    drain: Duration = 10.0
    on_failure: Literal["keep-old", "abort"] = "keep-old"


# ---- the proxy's built-in plugins (their blocks; the proxy reads them: docs/proxy.md) ----


_POSITIVE = msgspec.Meta(gt=0)


class RateLimitSettings(msgspec.Struct, frozen=True, kw_only=True):
    requests: Annotated[float, _POSITIVE] = 100.0
    per: Annotated[float, _POSITIVE] = 1.0  # seconds
    burst: Annotated[float, _POSITIVE] | None = None  # None: ``requests``


class CorsSettings(msgspec.Struct, frozen=True, kw_only=True):
    origins: list[str] | str = "*"
    methods: list[str] | str = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    headers: list[str] | str = "*"
    credentials: bool = False
    max_age: Annotated[float, _POSITIVE] = 600.0


# A built-in proxy plugin's type -> its block: a bad block is an error in validation (the
# proxy would leave the plugin out).
PROXY_PLUGIN_BLOCKS: dict[str, type[msgspec.Struct]] = {"rate-limit": RateLimitSettings, "cors": CorsSettings}


# ---- the proxy's TLS (``proxy.ssl``: docs/proxy.md, "TLS") ----


class SslFiles(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate chain and its key, PEM files (relative to the project's root)."""

    cert: str
    key: str


class SslInternal(msgspec.Struct, frozen=True, kw_only=True):
    """Caddy's own local CA issues the certificates (the Caddy backend only)."""


SSL_BLOCKS: dict[str, type[msgspec.Struct]] = {"files": SslFiles, "internal": SslInternal}


# The runners a blue-green rollout works for: a process, or one container per generation.
BLUE_GREEN_RUNNERS = frozenset({"script", "docker", "podman"})


class RolloutSpec(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    config: dict[str, Any] = {}
    ports: dict[str, PortBinding] = {}
    blue_green: BlueGreenSettings | None = None


# ---- health checks -------------------------------------------------------------------------


class _CheckTiming(msgspec.Struct, frozen=True, kw_only=True):
    interval: Duration = 10.0
    timeout: Duration = 5.0
    retries: Annotated[int, msgspec.Meta(ge=1)] = 3
    start_period: Duration = 0.0


class HttpCheck(_CheckTiming, frozen=True, kw_only=True):
    port: str  # "{{runtime.port.NAME}}" or digits
    path: str = "/health"
    method: Literal["GET", "HEAD", "POST"] = "GET"
    status: int | None = None  # None: any 2xx


class TcpCheck(_CheckTiming, frozen=True, kw_only=True):
    port: str


class CmdCheck(_CheckTiming, frozen=True, kw_only=True):
    command: str
    working_dir: str = "."  # absolute after parsing


class _ServerCheck(_CheckTiming, frozen=True, kw_only=True):
    """A check that speaks a server's own protocol to ``host:port``."""

    port: str  # "{{runtime.port.NAME}}" or digits
    host: str = "127.0.0.1"


class PostgresCheck(_ServerCheck, frozen=True, kw_only=True):
    """As pg_isready: the server answering a startup message (even with a password
    request or an authentication error) is up; "starting up" or "shutting down" is not."""

    user: str = "postgres"
    database: str = ""  # empty: the user's name, as the server assumes
    password: str = ""  # accepted for Hive's files; never needed to tell if the server is up


class MysqlCheck(_ServerCheck, frozen=True, kw_only=True):
    """MySQL and MariaDB: the server's greeting (its handshake packet) means up; an error
    packet instead (too many connections, host blocked) does not."""

    user: str = "root"  # accepted for Hive's files; the greeting needs no login
    password: str = ""
    database: str = ""


class RedisCheck(_ServerCheck, frozen=True, kw_only=True):
    """PING answered by PONG (after AUTH and SELECT when set)."""

    username: str = ""  # Redis 6 ACL user; empty: AUTH with the password alone
    password: str = ""
    db: Annotated[int, msgspec.Meta(ge=0)] = 0


class GrpcCheck(_ServerCheck, frozen=True, kw_only=True):
    """``grpc.health.v1.Health/Check``: passes when the answer is SERVING."""

    service: str = ""  # empty: the server as a whole


class HealthCheckSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One check. Timing fields are read from the type block for every type (plugins too)."""

    type: str
    config: dict[str, Any] = {}
    interval: float = 10.0
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 0.0
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    cmd: CmdCheck | None = None
    postgres: PostgresCheck | None = None
    mysql: MysqlCheck | None = None
    redis: RedisCheck | None = None
    grpc: GrpcCheck | None = None

    def server(self) -> PostgresCheck | MysqlCheck | RedisCheck | GrpcCheck | None:
        """The block of a check that speaks a server's protocol, if this is one."""
        return self.postgres or self.mysql or self.redis or self.grpc


# ---- proxy ---------------------------------------------------------------------------------


class PluginSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A ``{type: X, X: {...}}`` entry of a plugin chain (proxy plugins, ssl)."""

    type: str
    config: dict[str, Any] = {}
    skip: bool = False


class ProxyHeaders(msgspec.Struct, frozen=True, kw_only=True):
    add: dict[str, str] = {}
    remove: list[str] = []
    set: dict[str, str] = {}


class ProxyEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    host: str | None = None
    # "{{runtime.port.NAME}}" or digits; filled with the service's http (or only) port when omitted.
    port: str = ""
    strip_prefix: bool = False
    timeout: Duration = 60.0
    buffer_size: ByteSize = 1024 * 1024
    headers: ProxyHeaders = ProxyHeaders()
    plugins: list[PluginSpec] = []


class ProxyDns(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    upstream: str | None = None


class ProxySettings(msgspec.Struct, frozen=True, kw_only=True):
    bind: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    ssl: PluginSpec | None = None
    dns: ProxyDns | None = None
    plugins: list[PluginSpec] = []
    show_error_logs: bool = True
    debug: bool = False


# ---- environment ---------------------------------------------------------------------------


class EnvProvider(msgspec.Struct, frozen=True, kw_only=True):
    """A non-static environment provider in declaration order. For ``dotenv`` the config is
    ``{"files": [absolute paths]}``."""

    type: str
    config: dict[str, Any] = {}


class EnvironmentSpec(msgspec.Struct, frozen=True, kw_only=True):
    static: dict[str, str] = {}
    providers: list[EnvProvider] = []

    def dotenv_files(self) -> list[str]:
        files: list[str] = []
        for provider in self.providers:
            if provider.type == "dotenv":
                files.extend(str(f) for f in provider.config.get("files", []))
        return files


# ---- build, hooks, restart, exposure -------------------------------------------------------


class BuildSpec(msgspec.Struct, frozen=True, kw_only=True):
    command: str
    working_dir: str = "."  # absolute: the build dir, else the runner's working_dir, else root
    when: Literal["missing", "always", "never"] = "missing"
    output: str | None = None  # absolute; relative paths are resolved against working_dir


class WatchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What `hive up --watch` watches for this service; the daemon itself ignores it."""

    # absolute once built; relative ones are from the project root (default: the root)
    paths: list[str] = msgspec.field(default_factory=lambda: ["."])
    ignore: list[str] = []  # globs: `tmp/*` from the root, `*.log` anywhere
    debounce: Duration | None = None  # None: `hive up --debounce` (300 ms)
    action: Literal["restart", "rebuild"] = "restart"  # rebuild: its `build` first, then restart


class HookStep(msgspec.Struct, frozen=True, kw_only=True):
    """One hook step, normalised: ``kind`` says which of run/runner/parallel is set.
    The flat forms ``{type: script, run}`` and ``{type: docker, docker: {...}}`` become run/runner."""

    kind: Literal["run", "runner", "parallel"]
    run: str | None = None
    runner: RunnerSpec | None = None
    parallel: list[HookStep] = []
    working_dir: str = "."
    on_failure: OnHookFailure = "abort"
    timeout: float = 60.0
    retries: int = 3
    retry_delay: float = 5.0
    environment: dict[str, str] = {}


class HooksSpec(msgspec.Struct, frozen=True, kw_only=True):
    pre_up: list[HookStep] = msgspec.field(default_factory=list, name="pre-up")
    post_up: list[HookStep] = msgspec.field(default_factory=list, name="post-up")
    pre_down: list[HookStep] = msgspec.field(default_factory=list, name="pre-down")
    post_down: list[HookStep] = msgspec.field(default_factory=list, name="post-down")

    def is_empty(self) -> bool:
        return not (self.pre_up or self.post_up or self.pre_down or self.post_down)


class RestartSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Restart policy; a None timing means "use the daemon's default"."""

    policy: RestartPolicy = "never"
    delay: Duration | None = None
    max_delay: Duration | None = None
    reset_after: Duration | None = None
    jitter: bool | None = None


class ExposeSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    secret: str | None = None
    vars: dict[str, str] = {}


class UsesSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    secret: str | None = None
    as_: str | None = msgspec.field(default=None, name="as")
    vars: dict[str, str] = {}  # {original: new}

    def alias(self) -> str | None:
        """The name usable in ``{{uses.ALIAS.port.X}}``: ``as``, else the expose name if it is an
        identifier."""
        if self.as_:
            return self.as_
        return self.name if self.name.isidentifier() and self.name.isascii() else None


class ObservabilityCollectors(msgspec.Struct, frozen=True, kw_only=True):
    logs: bool = True
    metrics: bool = True
    traces: bool = True
    health: bool = True
    resources: bool = True
    proxy: bool = True


class ObservabilitySpec(msgspec.Struct, frozen=True, kw_only=True):
    resource_interval: Duration | None = None
    buffer_size: int | None = None
    plugins: list[str] = []
    collectors: ObservabilityCollectors = ObservabilityCollectors()


# ---- service and file ----------------------------------------------------------------------


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One service, defaults merged and ``${...}`` interpolated; ``{{...}}`` runtime templates are
    kept (see ``render_runtime``)."""

    name: str
    source: str
    root: str  # absolute project root; relative paths were resolved against it
    runner: RunnerSpec
    rollout: RolloutSpec | None = None
    proxy: list[ProxyEndpoint] = []
    depends_on: list[str] = []
    healthchecks: list[HealthCheckSpec] = []
    environment: EnvironmentSpec = EnvironmentSpec()
    build: BuildSpec | None = None
    restart: RestartSpec = RestartSpec()
    hooks: HooksSpec = HooksSpec()
    expose: ExposeSpec | None = None
    uses: list[UsesSpec] = []
    stop_signal: str = "SIGTERM"
    stop_grace: float = 10.0
    watch: WatchSpec | None = None

    def ports(self, color: Literal["blue", "green"] = "blue") -> dict[str, int]:
        """Rollout ports by name: recreate ports, or one colour of a blue-green rollout."""
        if self.rollout is None:
            return {}
        if color == "green":
            return {
                name: binding.green if binding.green is not None else binding.blue
                for name, binding in self.rollout.ports.items()
            }
        return {name: binding.blue for name, binding in self.rollout.ports.items()}

    def working_dir(self) -> str:
        """The script runner's working dir, else the project root."""
        if self.runner.script is not None:
            return self.runner.script.working_dir
        return self.root

    def stop_signum(self) -> int:
        return int(signal.Signals[self.stop_signal])


class HiveConfig(msgspec.Struct, frozen=True, kw_only=True):
    version: str = "1"
    registry_url: str | None = None
    defaults: dict[str, dict[str, Any]] = {}
    proxy: ProxySettings = ProxySettings()
    environment: EnvironmentSpec = EnvironmentSpec()
    observability: ObservabilitySpec | None = None
    hooks: HooksSpec = HooksSpec()
    services: dict[str, ServiceConfig] = {}
