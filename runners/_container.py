"""A container runner driving an engine's command line, and the block both engines share.

The docker and podman runners run on the engines' APIs (:mod:`runners._api_container`,
which derives from :class:`ContainerRunner` and keeps its block, names, environment and
error words); compose's handles still supervise through this CLI handle. Below, what the
CLI implementation does: a service is one container, started with ``<engine> run -d`` and
supervised through the engine's own CLI (``wait``, ``logs -f``, ``stop``, ``rm``);
:class:`ContainerRunner` is parameterised by the binary.

- **Start: one engine call when all is well.** ``run -d`` does everything: the image is
  pulled by the engine only if it is missing (``--pull missing``; ``--pull never`` with
  ``deny_pull``), and a stale container of the same name is replaced (podman:
  ``--replace``; docker has no such flag, so on its name-conflict error the stale one is
  removed with ``rm -f`` and ``run -d`` is tried once more). Only a failure costs more
  calls: an image error is classified by an ``image inspect`` (missing and ``deny_pull``,
  or the pull failed), and a container the engine created but could not start (a port
  taken) is removed.
- **Identity.** The container is named ``container_name`` or, by default,
  ``hive-<source>.<service>[.<N>]`` (the ``.`` cannot occur in Hive names, so two sources
  never collide; a name that needed sanitising gets a hash of the FQN appended), and
  ``.blue`` or ``.green`` after it for a blue-green generation (``RunSpec.color``: the
  next generation starts while the old one runs, so they need two names). It
  carries the labels ``hive.fqn``, ``hive.source``, ``hive.config-hash`` (the first 16 hex
  of the sha256 of the canonical JSON of the block, the image and the environment passed)
  and ``hive.stop-signal``.
- **The block.** :class:`ContainerConfig` is the one definition of the ``docker`` and
  ``podman`` keys (``hive config validate`` checks a hive.yaml against it); the runner
  decodes ``RunSpec.config`` into it once per start, adoption or hook step, and the handle
  keeps only the engine's socket from it.
- **Environment.** ``RunSpec.env`` is the complete environment a script would get, mostly
  the daemon's own (PATH, HOME, ...), which must not leak into a container. What is passed
  is every entry of ``spec.env`` the service sets itself (``spec.own_env``: its own
  variables, even to the daemon's value, Hive's ``HIVE_*`` variables and whatever a used
  service provides) or that is *not* in the daemon's ``os.environ`` with the same value,
  then the block's ``environment`` on top. Values reach the engine
  through the environment of the CLI process (``-e KEY``) rather than its argv, so they do
  not show in ``ps``; a key the daemon's environment also has (with another value: the
  CLI's own ``HOME``, ``PATH`` must stay) goes in an ``--env-file`` of mode 0600, removed
  once the CLI has read it. No value is ever on a command line.
- **Output.** A detached ``<engine> logs -f <id>`` in its own session appends the
  container's stdout and stderr to ``spec.stdout_path`` and ``spec.stderr_path`` (opened
  ``O_APPEND``): the daemon follows those files, and may die without the output stopping.
  Its pid is in :meth:`ContainerHandle.record`; a later daemon keeps it if it still runs,
  or starts another with ``--since`` the adoption time.
- **Exit.** ``<engine> wait <id>``, a child process awaited with anyio (no polling),
  prints the exit code: ``ExitStatus(exit_code=...)``, as the engine reports it (a main
  process killed by signal N is 128+N). Before ``wait()`` returns, the log follower is
  given a moment to copy the last lines. A container that exited by itself is left for
  post-mortem inspection; the next start (or ``stop()``) removes it. One ``inspect``
  follows: an engine that cannot be reached right after the exit is shutting down (a
  graceful ``systemctl restart docker`` stops the containers, then closes its API), so the
  exit has ``cause`` set (a failure, even with code 0) and is told once the engine is back.
- **Stop.** The container is created with ``--stop-signal`` set to the spec's signal, so a
  stop with that signal is ``<engine> stop -t <grace>`` (the engine sends it, then SIGKILL
  after the grace). A stop with another signal sends it with ``<engine> kill --signal``,
  waits the grace on the exit, then kills with SIGKILL. Then ``rm -f -v`` (anonymous
  volumes go with it; named volumes stay).
- **Errors.** Everything a user can act on is a :class:`RunnerError` with one line: the
  engine not installed, its daemon unreachable, the image missing with ``deny_pull`` or a
  failed pull (with the engine's message), a port already in use, an invalid option.

Engine commands run through ``anyio.run_process`` / ``anyio.open_process``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import anyio.abc
import msgspec
import psutil

from ._container_keys import (
    PullPolicy,
    check_common,
    common_run_args,
    env_file_values,
    pull_policy,
)
from ._engine_api import EngineUnreachable
from ._process import open_output
from ._watch import SharedWatch
from .base import (
    ConfigProblem,
    ExitStatus,
    Runner,
    RunnerConfig,
    RunnerError,
    RunSpec,
    ServiceHandle,
    decode_config,
    describe_exit,
    valid_stop_signal,
)
from .output import run_streaming

__all__ = [
    "ContainerConfig", "ContainerHandle", "ContainerRunner", "ContainerSecurity", "EngineUnreachable",
    "container_name", "parse_port", "parse_volume",
]


def _exit_code(state: dict[str, Any]) -> int | None:
    """A container's exit code from its inspected ``State`` (None if not reported)."""
    code = state.get("ExitCode")
    return code if isinstance(code, int) else None

# How long the log follower gets to copy the last lines after the container ended.
DRAIN_TIMEOUT = 5.0
# How long a container gets to vanish after SIGKILL before stop() gives up on it.
KILL_TIMEOUT = 10.0
# Deadline of one engine command (a pull is not bounded: the engine reports its failure).
CALL_TIMEOUT = 60.0
# A line of a hook container's output is cut there.
HOOK_LINE_CAP = 64 * 1024
# The exit code of `docker run` / `podman run` when the engine, not the container, failed.
ENGINE_FAILED = 125
# Times `wait` is re-run when the engine lost track of a container that still runs.
_WAIT_RETRIES = 3
# While the engine cannot be reached, it is asked again after this long, doubling to the cap.
ENGINE_RETRY_FIRST = 0.25
ENGINE_RETRY_MAX = 5.0

log = logging.getLogger("hive.runners.container")

_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]")
_PORT = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp|sctp))?$")
_IN_USE = re.compile(
    r"(?:listen (?:tcp|udp|sctp)[46]? |Bind for )(\[[0-9a-fA-F:.]*\]|[0-9.]+|[0-9a-fA-F:]*):(\d+)"
)
_IMAGE_ERRORS = (
    "No such image", "image not known", "Unable to find image", "Trying to pull",
    "pull access denied", "manifest unknown", "repository does not exist", "failed to resolve",
)


# --- the block -----------------------------------------------------------------------------


class ContainerSecurity(msgspec.Struct, frozen=True, kw_only=True):
    """``security``: secure unless loosened (every capability dropped, no new privileges)."""

    cap_drop_all: bool = True  # --cap-drop ALL
    cap_add: list[str] = []  # capabilities given back
    no_new_privileges: bool = True  # --security-opt no-new-privileges
    read_only: bool = False  # a read-only root filesystem
    user: str | None = None  # uid:gid or a name; None: the image's
    security_opt: list[str] = []  # more --security-opt values


class ContainerConfig(RunnerConfig, frozen=True, kw_only=True):
    """The ``docker`` / ``podman`` block: the same keys for both engines."""

    image: str
    deny_pull: bool = False  # never pull: a missing image is an error
    container_name: str | None = None  # None: hive-<source>.<service>[.<N>]
    ports: list[str] = []  # HOST:CONTAINER[/tcp|udp|sctp], published on bind_ip
    bind_ip: str = "127.0.0.1"
    volumes: list[str] = []  # SRC:DST[:mode]; ./ and ../ against the project
    environment: dict[str, str] = {}  # over the service's own variables
    command: list[str] | None = None  # None: the image's
    entrypoint: list[str] | None = None
    network_mode: str | None = None  # host, none, a network name; None: the engine's
    socket: str | None = None  # the engine's socket path or URL; None: the runner setting
    security: ContainerSecurity | None = None  # None: the secure defaults
    # The hive.yaml format has it; Hive's own `restart` policy restarts the service.
    restart: str | None = None
    # Compose's common keys (see runners._container_keys).
    env_file: str | list[str] | None = None  # KEY=VALUE files, relative to the project
    labels: dict[str, str] = {}
    working_dir: str | None = None  # inside the container; None: the image's
    hostname: str | None = None
    extra_hosts: list[str] | dict[str, str] = []  # HOST:ADDRESS entries, or {HOST: ADDRESS}
    mem_limit: str | int | None = None  # bytes, or 512m, 1g
    cpus: float | None = None  # 0.5: half a CPU
    init: bool = False  # an init process as PID 1 (signals, zombies)
    user: str | None = None  # uid[:gid] or a name; None: the image's (security.user too)
    pull: PullPolicy | None = None  # None: never with deny_pull, else missing

    def check(self) -> list[ConfigProblem]:
        problems = check_common(self)
        if not self.image.strip():
            problems.append(ConfigProblem(("image",), "image is required (the image to run, e.g. nginx:1.27)"))
        for index, port in enumerate(self.ports):
            if ":" not in port:
                problems.append(ConfigProblem(
                    ("ports", index), f"'{port}' has no ':' and is ignored (expected HOST:CONTAINER[/proto])",
                    warning=True,
                ))
        problems += self._ignored()
        return problems

    def _ignored(self) -> list[ConfigProblem]:
        """Keys the format accepts that cannot apply here: said, not silently dropped."""
        problems = []
        if self.restart is not None:
            problems.append(ConfigProblem(("restart",), (
                "ignored: Hive restarts the service by its own restart policy; set the "
                "service's restart (beside runner: restart: {policy: always}) instead"), warning=True))
        if self.ports and (self.network_mode or "").strip() == "host":
            problems.append(ConfigProblem(("ports",), (
                "ignored with network_mode: host (the container uses the host's ports directly): "
                "remove ports, or use another network_mode"), warning=True))
        return problems


# --- options -------------------------------------------------------------------------------


def container_name(fqn: str) -> str:
    """The default container name of ``fqn``: ``hive-<source>.<service>[.<N>]``."""
    source, _, rest = fqn.partition(":")
    service, _, index = rest.partition("#")
    raw = f"hive-{source}.{service}" + (f".{index}" if index else "")
    clean = _NAME_OK.sub("-", raw)
    if clean != raw or "." in source or "." in service:
        # Sanitising may have made two FQNs equal: the FQN's hash keeps them apart.
        clean += "-" + hashlib.sha256(fqn.encode()).hexdigest()[:8]
    return clean


def spec_container_name(spec: RunSpec, config: ContainerConfig) -> str:
    """The container's name: ``container_name`` or the FQN's, with the blue-green colour."""
    name = config.container_name or container_name(spec.fqn)
    if spec.color:
        name = f"{name}.{spec.color}"
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise RunnerError(f"invalid container_name {name!r}: use letters, digits, _ . -")
    return name


def parse_port(entry: str, bind_ip: str) -> str | None:
    """``HOST:CONTAINER[/proto]`` as a ``--publish`` value bound to ``bind_ip``; None for
    an entry without ``:``, which the format ignores (``hive config validate`` warns)."""
    if ":" not in entry:
        return None
    match = _PORT.match(entry.strip())
    if match is None or not all(0 < int(port) < 65536 for port in match.group(1, 2)):
        raise RunnerError(f"invalid port {entry!r}: expected HOST:CONTAINER[/tcp|udp|sctp]")
    host, inner, proto = match.group(1), match.group(2), match.group(3) or "tcp"
    address = f"[{bind_ip}]" if ":" in bind_ip else bind_ip
    return f"{address}:{int(host)}:{int(inner)}/{proto}"


def parse_volume(entry: str, project_dir: str) -> str:
    """``SRC:DST[:mode]`` as a ``--volume`` value; a ``./`` or ``../`` source is resolved
    against ``project_dir`` and refused if it leads outside it.

    Symlinks are followed (``realpath``), in the last name and in every directory on the
    way: a link in the project that points out of it is refused like ``../..``. The engine
    is given the resolved path, not the link.
    """
    if not entry:
        raise RunnerError(f"invalid volume {entry!r}: expected SRC:DST[:mode]")
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
        raise RunnerError(f"invalid volume {entry!r}: expected SRC:DST[:mode] with an absolute DST")
    source = parts[0]
    if source in (".", "..") or source.startswith(("./", "../")):
        root = os.path.realpath(project_dir)
        resolved = os.path.realpath(os.path.join(root, source))
        if not _within(resolved, root):
            # Inside by its spelling, outside once resolved: a symlink leads out.
            how = " through a symlink" if _within(os.path.normpath(os.path.join(root, source)), root) else ""
            raise RunnerError(
                f"invalid volume {entry!r}: {source} resolves{how} to {resolved}, outside the project {root}"
            )
        parts[0] = resolved
    elif not source.startswith("/") and "/" in source:
        raise RunnerError(
            f"invalid volume {entry!r}: a relative source must start with ./ or ../"
        )
    return ":".join(parts)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def passed_environment(spec: RunSpec, config: ContainerConfig) -> dict[str, str]:
    """The variables the container gets (see the module docstring)."""
    host = os.environ
    own = spec.own_env
    env = {key: value for key, value in spec.env.items() if key in own or host.get(key) != value}
    env.update(env_file_values(config.env_file, spec.working_dir or ".", env))
    env.update(config.environment)
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise RunnerError(f"invalid environment variable name {key!r}")
    return env


@contextlib.contextmanager
def env_file(env: Mapping[str, str]) -> Iterator[str | None]:
    """The variables of ``env`` the daemon's environment also has, in an ``--env-file``
    (mode 0600, removed on exit) so their values are on no command line; None if there
    are none. The format has one ``KEY=VALUE`` a line: a value with a newline is refused."""
    clashing = {key: value for key, value in env.items() if key in os.environ}
    if not clashing:
        yield None
        return
    for key, value in clashing.items():
        if "\n" in value or "\r" in value:
            raise RunnerError(f"the value of {key} has a line break: a container cannot get it "
                              "when the daemon's environment has a variable of that name")
    fd, path = tempfile.mkstemp(prefix="hive-env-", suffix=".list")  # 0600, this user's
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(f"{key}={value}\n" for key, value in clashing.items())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def config_hash(spec: RunSpec, image: str, env: Mapping[str, str]) -> str:
    # The block as written, not as decoded: a default added to ContainerConfig must not
    # make every running container look changed.
    canonical = json.dumps(
        {"config": spec.config, "image": image, "env": dict(env)},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]



# --- engine output -------------------------------------------------------------------------


def engine_message(stderr: bytes | str) -> str:
    """The one line of an engine's error output that says what went wrong."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Run '", "See '", "time="))] or lines
    errors = [line for line in lines if "Error" in line or "error" in line]
    line = (errors or lines or ["no error message"])[-1]
    for prefix in ("docker: ", "podman: ", "Error response from daemon: ", "Error: ", "error: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    for prefix in ("Error response from daemon: ", "Error: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return line


def missing_image(image: str, config: ContainerConfig) -> str:
    """The error for an image that is missing and may not be pulled."""
    why = "deny_pull is set" if config.deny_pull else "pull is never"
    return f"image {image} is not present and {why}"


def _name_conflict(stderr: bytes) -> bool:
    message = engine_message(stderr)
    return "container name" in message and "already in use" in message


def _is_missing(message: str) -> bool:
    lowered = message.lower()
    return "no such container" in lowered or "no such object" in lowered or "no container with" in lowered


# --- the runner ----------------------------------------------------------------------------


class ContainerRunner(Runner):
    """Runs a service as a container through an engine's CLI (``docker``, ``podman``)."""

    name: ClassVar[str] = "container"
    Config: ClassVar[type[ContainerConfig]] = ContainerConfig
    engine: ClassVar[str] = "docker"  # the binary's default name
    display: ClassVar[str] = "Docker"  # the engine's name in messages
    replace_flag: ClassVar[bool] = False  # `run --replace` removes a same-name container
    socket_flag: ClassVar[str] = "--host"  # the global option naming the engine's socket
    # An engine's error saying it cannot be reached; group "at": the socket it tried.
    unreachable_text: ClassVar[re.Pattern[str]] = re.compile(
        r"Cannot connect to the Docker daemon at (?:unix://)?(?P<at>\S+?)\.?(?:\s|$)|Cannot connect to"
    )

    def __init__(self, binary: str | None = None) -> None:
        self.handle_class: type[ContainerHandle] = ContainerHandle  # what start and adopt return
        self.binary = binary or self.engine
        self.socket: str | None = None  # [runners.NAME] socket; a block's `socket` wins
        self._path: str | None = None

    def configure(self, settings: Mapping[str, Any]) -> None:
        """``[runners.docker]`` / ``[runners.podman]``: ``binary`` (the CLI, a name on PATH
        or a path) and ``socket`` (the engine's socket path or URL)."""
        unknown = sorted(set(settings) - {"binary", "socket"})
        if unknown:
            raise RunnerError(f"unknown setting {unknown[0]!r} (known: binary, socket)")
        binary = settings.get("binary", self.engine)
        if not isinstance(binary, str) or not binary.strip():
            raise RunnerError(f"binary must be a program name or path, not {binary!r}")
        socket = settings.get("socket")
        if socket is not None and (not isinstance(socket, str) or not socket.strip()):
            raise RunnerError(f"socket must be a path or URL, not {socket!r}")
        self.binary, self.socket, self._path = binary.strip(), socket, None

    # --- plumbing -------------------------------------------------------------------

    def executable(self) -> str:
        """The engine binary's path; RunnerError if it is not installed."""
        if self._path is None or not os.access(self._path, os.X_OK):
            found = shutil.which(self.binary)
            if found is None:
                raise RunnerError(f"{self.binary} is not installed (no `{self.binary}` on PATH)")
            self._path = found
        return self._path

    def config_of(self, spec: RunSpec) -> ContainerConfig:
        """The spec's block, decoded; RunnerError quoting the ``$.path`` of what is wrong."""
        return decode_config(spec.config, ContainerConfig, self.name)

    def socket_of(self, socket: str | None) -> str | None:
        """The engine socket to use: a block's own ``socket``, else the runner setting.

        The engine helpers below take the block's socket (None: the setting's), not the
        block: a container whose service is gone has only its record to say it."""
        return socket or self.socket

    def global_args(self, socket: str | None) -> list[str]:
        """Options before the subcommand (the engine socket)."""
        socket = self.socket_of(socket)
        if not socket:
            return []
        return [self.socket_flag, socket if "://" in socket else f"unix://{socket}"]

    def unreachable(self, message: str, socket: str | None) -> EngineUnreachable | None:
        """The error for an engine daemon that cannot be reached, if that is what
        ``message`` says."""
        match = self.unreachable_text.search(message)
        if match is None:
            return None
        where = match.groupdict().get("at") or self.socket_of(socket) or ""
        at = f" at {where}" if where else ""
        return EngineUnreachable(f"cannot reach the {self.display} engine{at}: {message}")

    def error(self, action: str, stderr: bytes, socket: str | None) -> RunnerError:
        """A RunnerError from an engine command's error output."""
        message = engine_message(stderr)
        unreachable = self.unreachable(message, socket)
        if unreachable is not None:
            return unreachable
        in_use = _IN_USE.search(message)
        if in_use is not None and ("already in use" in message or "already allocated" in message):
            return RunnerError(f"port {in_use.group(1)}:{in_use.group(2)} is already in use")
        return RunnerError(f"{self.binary} {action} failed: {message}")

    async def call(
        self, args: Sequence[str], socket: str | None = None, *, env: Mapping[str, str] | None = None,
        timeout: float | None = CALL_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [self.executable(), *self.global_args(socket), *args]
        try:
            with anyio.fail_after(timeout):
                return await anyio.run_process(argv, check=False, env=env, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            self._path = None
            raise RunnerError(f"{self.binary} is not installed (no `{self.binary}` on PATH)") from None
        except TimeoutError:
            raise RunnerError(f"{self.binary} {args[0]} did not answer within {timeout:.0f} s") from None
        except OSError as exc:
            raise RunnerError(f"cannot run {self.binary}: {exc.strerror}") from None

    async def remove(self, ref: str, socket: str | None = None) -> None:
        """``rm -f -v``, shielded from cancellation: whatever happens, it is gone."""
        with anyio.CancelScope(shield=True), contextlib.suppress(RunnerError):
            await self.call(["rm", "-f", "-v", ref], socket, timeout=KILL_TIMEOUT + 20)

    async def inspect(self, refs: Sequence[str], socket: str | None = None) -> list[dict[str, Any]]:
        """The engine's JSON description of containers (those that exist)."""
        result = await self.call(["inspect", "--type", "container", *refs], socket)
        try:
            found = json.loads(result.stdout or b"[]")
        except ValueError:
            found = []
        if result.returncode != 0 and not found:
            message = engine_message(result.stderr)
            if _is_missing(message):
                return []
            raise self.error("inspect", result.stderr, socket)
        return [item for item in found if isinstance(item, dict)]

    async def image_id(self, ref: str, socket: str | None = None) -> str | None:
        """The id of the image ``ref`` names now (no ``sha256:``); None if there is none."""
        result = await self.call(["image", "inspect", "--format", "{{.Id}}", ref], socket)
        if result.returncode != 0:
            return None
        return result.stdout.decode(errors="replace").strip().removeprefix("sha256:") or None

    # --- start ----------------------------------------------------------------------

    def run_args(self, spec: RunSpec, config: ContainerConfig, env: Mapping[str, str], name: str,
                 digest: str, *, hook: bool = False, env_file: str | None = None,
                 ) -> tuple[list[str], dict[str, str]]:
        """``run -d ...`` (a hook step: ``run --rm``, attached) and the CLI's environment
        carrying the variables' values. A variable the daemon's environment also has
        cannot go through the CLI's (it would change the CLI's own ``HOME``, ``PATH``,
        ``DOCKER_HOST``): it is in ``env_file`` (see :func:`env_file`), never in argv."""
        source = spec.fqn.partition(":")[0]
        stop_signal = valid_stop_signal(spec.stop_signal)
        # A hook's container is not an instance: `discover` must not find it.
        owner = "hive.hook-of" if hook else "hive.fqn"
        args = ["run", "--rm" if hook else "-d", "--name", name,
                "--label", f"{owner}={spec.fqn}", "--label", f"hive.source={source}",
                "--label", f"hive.config-hash={digest}", "--label", f"hive.stop-signal={stop_signal}",
                "--stop-signal", str(stop_signal),
                "--pull", pull_policy(config.pull, config.deny_pull)]
        if self.replace_flag:
            args.append("--replace")
        bind_ip = config.bind_ip or "127.0.0.1"
        for entry in config.ports:
            published = parse_port(entry, bind_ip)
            if published is not None:
                args += ["--publish", published]
        for entry in config.volumes:
            args += ["--volume", parse_volume(entry, spec.working_dir or ".")]
        cli_env = dict(os.environ)
        for key, value in env.items():
            if key not in os.environ:
                args += ["--env", key]
                cli_env[key] = value
            elif env_file is None:
                raise RunnerError(f"internal error: {key} needs an env file")
        if env_file is not None:
            args += ["--env-file", env_file]
        if config.network_mode:
            args += ["--network", config.network_mode]
        args += self.security_args(config.security or ContainerSecurity())
        args += common_run_args(config)
        command = list(config.command or [])
        if config.entrypoint is not None:
            args += ["--entrypoint", config.entrypoint[0] if config.entrypoint else ""]
            command = config.entrypoint[1:] + command
        args += [config.image.strip(), *command]
        return args, cli_env

    @staticmethod
    def security_args(security: ContainerSecurity) -> list[str]:
        args: list[str] = []
        if security.cap_drop_all:
            args += ["--cap-drop", "ALL"]
        for cap in security.cap_add:
            args += ["--cap-add", cap]
        if security.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        for opt in security.security_opt:
            args += ["--security-opt", opt]
        if security.read_only:
            args.append("--read-only")
        if security.user:
            args += ["--user", security.user]
        return args

    async def start(self, spec: RunSpec) -> ContainerHandle:
        config = self.config_of(spec)
        image, socket = config.image.strip(), config.socket
        env = passed_environment(spec, config)
        digest = config_hash(spec, image, env)
        name = spec_container_name(spec, config)
        self.executable()
        handle: ContainerHandle | None = None
        try:
            with env_file(env) as path:
                args, cli_env = self.run_args(spec, config, env, name, digest, env_file=path)
                result = await self.call(args, socket, env=cli_env, timeout=None)
                if result.returncode != 0 and not self.replace_flag and _name_conflict(result.stderr):
                    await self.call(["rm", "-f", "-v", name], socket)  # a stale container
                    result = await self.call(args, socket, env=cli_env, timeout=None)
            if result.returncode != 0:
                raise await self._start_error(result.stderr, config, name)
            lines = result.stdout.decode(errors="replace").split()
            if not lines:
                raise RunnerError(f"{self.binary} run printed no container id")
            container_id = lines[-1]
            handle = self.handle_class(
                runner=self, spec=spec, container_id=container_id, name=name, config_hash=digest,
                run_signal=valid_stop_signal(spec.stop_signal), socket=socket,
            )
            await handle.follow_logs(since=None)
            return handle
        except BaseException:
            # Cancelled or failed half-way: no container left running unsupervised.
            with anyio.CancelScope(shield=True):
                if handle is not None:
                    await handle.close_logs()
                await self.remove(name, socket)
            raise

    async def run_once(self, spec: RunSpec, output: Callable[[str, str], None]) -> int:
        """A hook step: ``run --rm`` attached, named ``hive-hook-<8 hex>``; its output
        goes to ``output``. The engine's own failure (exit 125: image missing, port taken,
        ...) is a RunnerError; cancelled, the container is removed."""
        config = self.config_of(spec)
        image, socket = config.image.strip(), config.socket
        env = passed_environment(spec, config)
        name = f"hive-hook-{secrets.token_hex(4)}"
        digest = config_hash(spec, image, env)
        errors: list[str] = []

        def emit(stream: str, line: str) -> None:
            if stream == "stderr":
                errors.append(line)
                del errors[:-20]
            output(stream, line)

        with env_file(env) as path:
            args, cli_env = self.run_args(spec, config, env, name, digest, hook=True, env_file=path)
            argv = [self.executable(), *self.global_args(socket), *args]
            try:
                code = await run_streaming(argv, env=cli_env, output=emit, cap=HOOK_LINE_CAP)
            except BaseException:
                await self.remove(name, socket)  # the CLI's end does not end the container
                raise
        if code == ENGINE_FAILED:
            raise await self._start_error("\n".join(errors).encode(), config, name)
        return code

    async def _start_error(self, stderr: bytes, config: ContainerConfig, name: str) -> RunnerError:
        message = engine_message(stderr)
        text = stderr.decode(errors="replace")
        image, socket = config.image.strip(), config.socket
        unreachable = self.unreachable(message, socket)
        if unreachable is not None:
            return unreachable
        await self.remove(name, socket)  # created but not started (a port taken, ...)
        if any(marker in text for marker in _IMAGE_ERRORS):
            present = await self.call(["image", "inspect", "--format", "{{.Id}}", image], socket)
            if present.returncode != 0:
                if pull_policy(config.pull, config.deny_pull) == "never":
                    return RunnerError(missing_image(image, config))
                return RunnerError(f"cannot pull image {image}: {message}")
        return self.error("run", stderr, socket)

    # --- adopt, discover ----------------------------------------------------------------

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ContainerHandle | None:
        """The container of ``record`` if it still runs with the spec's FQN and config
        hash; None otherwise (gone, stopped, or started from another configuration)."""
        container_id = _container_record(record, self.name)
        config = self.config_of(spec)
        digest = config_hash(spec, config.image.strip(), passed_environment(spec, config))
        found = await self.inspect([container_id], config.socket)
        if not found:
            return None
        info = found[0]
        labels = (info.get("Config") or {}).get("Labels") or {}
        state = info.get("State") or {}
        if not state.get("Running") or labels.get("hive.fqn") != spec.fqn \
                or labels.get("hive.config-hash") != digest:
            return None
        try:
            run_signal = int(labels.get("hive.stop-signal") or spec.stop_signal)
        except ValueError:
            run_signal = 0  # unknown: stop() sends the signal itself
        handle = self.handle_class(
            runner=self, spec=spec, container_id=str(info.get("Id") or container_id),
            name=str(info.get("Name") or record.get("name") or "").lstrip("/"),
            config_hash=digest, run_signal=run_signal, adopted=True, socket=config.socket,
        )
        if not handle.reuse_follower(record.get("logs_pid")):
            await handle.follow_logs(since=time.time())
        return handle

    async def stop_orphan(self, fqn: str, record: dict[str, Any], grace: float) -> bool:
        """Stop and remove the container ``record`` names, if its ``hive.fqn`` label
        still says it is ``fqn``'s. The service's configuration is gone: the engine socket
        is the recorded one, and the container's own stop signal is sent."""
        container_id = _container_record(record, self.name)
        recorded = record.get("socket")
        socket = recorded if isinstance(recorded, str) and recorded else None
        found = await self.stop_leftover(
            container_id, socket, grace, lambda labels: labels.get("hive.fqn") == fqn
        )
        if found is None and "socket" not in record:
            # A record from before sockets were recorded: it may be on another engine.
            where = self.socket_of(socket) or "the default socket"
            log.warning("%s: container %s not found on the %s engine at %s; if its service had "
                        "a socket of its own, remove it there", fqn, container_id, self.display, where)
        return bool(found)

    async def stop_leftover(
        self, container_id: str, socket: str | None, grace: float,
        ours: Callable[[Mapping[str, str]], bool],
    ) -> bool | None:
        """``stop -t`` then ``rm -f -v`` the container if its labels pass ``ours``;
        whether it was running, None if there is no such container."""
        found = await self.inspect([container_id], socket)
        if not found:
            return None
        info = found[0]
        if not ours((info.get("Config") or {}).get("Labels") or {}):
            return False
        running = bool((info.get("State") or {}).get("Running"))
        if running:
            await self.stop_container(container_id, socket, grace)
        await self.remove(container_id, socket)
        return running

    async def stop_container(self, ref: str, socket: str | None, grace: float) -> None:
        """``stop -t``: the container's own stop signal, SIGKILL after ``grace``; one that
        is gone already is not an error."""
        seconds = math.ceil(max(0.0, grace))
        result = await self.call(["stop", "-t", str(seconds), ref], socket, timeout=seconds + KILL_TIMEOUT + 20)
        if result.returncode != 0 and not _is_missing(engine_message(result.stderr)):
            raise self.error("stop", result.stderr, socket)

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        """Records of running containers labelled ``hive.fqn=<fqn>`` whose environment
        carries ``marker`` (as the value of the variable that holds it in ``spec.env``),
        newest first."""
        socket = self.config_of(spec).socket
        listed = await self.call(
            ["ps", "--no-trunc", "--filter", f"label=hive.fqn={spec.fqn}", "--format", "{{.ID}}"], socket
        )
        if listed.returncode != 0:
            raise self.error("ps", listed.stderr, socket)
        ids = listed.stdout.decode(errors="replace").split()
        if not ids:
            return []
        return await self._marked_records(ids, spec, marker, socket)

    async def _marked_records(self, ids: list[str], spec: RunSpec, marker: str, socket: str | None) -> list[dict[str, Any]]:
        """Records of the containers ``ids`` whose environment carries ``marker``, newest first."""
        keys = [key for key, value in spec.env.items() if value == marker]
        wanted = {f"{key}={marker}" for key in keys}
        records = []
        for info in await self.inspect(ids, socket):
            environ = (info.get("Config") or {}).get("Env") or []
            if wanted and not wanted & set(environ):
                continue
            labels = (info.get("Config") or {}).get("Labels") or {}
            records.append((str(info.get("Created") or ""), {
                "engine": self.name,
                "container_id": str(info.get("Id")),
                "name": str(info.get("Name") or "").lstrip("/"),
                "config_hash": labels.get("hive.config-hash"),
                "logs_pid": None,
            }))
        records.sort(key=lambda item: item[0], reverse=True)
        return [record for _, record in records]


def _container_record(record: dict[str, Any], engine: str) -> str:
    """The container id of a record of ``engine``; RunnerError if it is not one."""
    try:
        container_id = str(record["container_id"])
        recorded = str(record.get("engine") or engine)
    except (KeyError, TypeError):
        raise RunnerError(f"not a {engine} container record: {record!r}") from None
    if recorded != engine or not container_id:
        raise RunnerError(f"not a {engine} container record: {record!r}")
    return container_id


# --- the handle ----------------------------------------------------------------------------


class ContainerHandle(ServiceHandle):
    """One running container. ``container_id`` is its full id."""

    container_id: str
    # While the engine cannot be reached, it is asked again after this long, doubling to the cap.
    retry_first: ClassVar[float] = ENGINE_RETRY_FIRST
    retry_max: ClassVar[float] = ENGINE_RETRY_MAX

    def __init__(
        self, *, runner: ContainerRunner, spec: RunSpec, container_id: str, name: str,
        config_hash: str, run_signal: int, adopted: bool = False, socket: str | None = None,
    ) -> None:
        self.runner = runner
        self.container_id = container_id
        self.name = name
        self.config_hash = config_hash
        self.run_signal = run_signal
        self.adopted = adopted
        self._spec = msgspec.structs.replace(spec, env={}) if spec.env else spec
        self._socket = socket  # the block's engine socket (None: the runner's setting)
        self._logs: anyio.abc.Process | None = None
        self._logs_pid: int | None = None
        self._status: ExitStatus | None = None
        self._exit: ExitStatus | None = None  # known before the logs are drained
        self._waiter: anyio.abc.Process | None = None
        self._watch = SharedWatch()
        self._stop_done: anyio.Event | None = None
        self._stop_failed = False  # the last stop could not be sent (its engine was away)
        self._stop_asked: tuple[int, float] | None = None  # (signal, grace) of a stop

    def __repr__(self) -> str:
        state = self._status.describe() if self._status is not None else "running"
        return f"<ContainerHandle {self._spec.fqn} {self.runner.name} {self.container_id[:12]} {state}>"

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    def record(self) -> dict[str, Any]:
        """``engine``, ``container_id``, ``name``, ``config_hash``, ``stop_signal`` (the one
        the container was created with), ``logs_pid`` (the log follower) and ``socket``
        (the engine's, when not the default: what reaches it once the service is gone)."""
        return {
            "engine": self.runner.name,
            "container_id": self.container_id,
            "name": self.name,
            "socket": self.runner.socket_of(self._socket),
            "config_hash": self.config_hash,
            "stop_signal": self.run_signal,
            "logs_pid": self._logs_pid,
        }

    async def outdated(self) -> str | None:
        """The image the container's tag names now is not the one it was created from
        (rebuilt, or pulled again, under the same tag)."""
        found = await self.runner.inspect([self.container_id], self._socket)
        if not found or not (found[0].get("State") or {}).get("Running"):
            return None
        ref = str((found[0].get("Config") or {}).get("Image") or "")
        running = str(found[0].get("Image") or "").removeprefix("sha256:")
        current = await self.runner.image_id(ref, self._socket) if ref and running else None
        if current is None or current == running:
            return None
        return f"image {ref} was rebuilt (now {current[:12]}, the container runs {running[:12]})"

    def exec_prefix(self) -> list[str]:
        """``<engine> exec <id>``: what runs a command inside the container (cmd checks)."""
        return [self.runner.executable(), *self.runner.global_args(self._socket),
                "exec", self.container_id]

    # --- output ---------------------------------------------------------------------

    async def follow_logs(self, since: float | None) -> None:
        """Start ``logs -f`` appending to the capture files, in its own session."""
        spec = self._spec
        if not spec.stdout_path and not spec.stderr_path:
            return
        args = [self.runner.executable(), *self.runner.global_args(self._socket), "logs", "--follow"]
        if since is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
            args += ["--since", f"{stamp}.{int(since % 1 * 1e9):09d}Z"]
        args.append(self.container_id)
        out = open_output(spec.stdout_path) if spec.stdout_path else None
        try:
            if not spec.stderr_path:
                err = None
            elif spec.stderr_path == spec.stdout_path:
                err = out
            else:
                err = open_output(spec.stderr_path)
            try:
                self._logs = await anyio.open_process(
                    args, stdin=subprocess.DEVNULL,
                    stdout=out if out is not None else subprocess.DEVNULL,
                    stderr=err if err is not None else subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RunnerError(f"cannot follow the container's output: {exc.strerror}") from None
            finally:
                if err is not None and err != out:
                    os.close(err)
        finally:
            if out is not None:
                os.close(out)
        self._logs_pid = self._logs.pid

    def reuse_follower(self, pid: Any) -> bool:
        """Keep the log follower a previous daemon started, if it still follows us."""
        if not isinstance(pid, int) or pid <= 0:
            return False
        try:
            process = psutil.Process(pid)
            cmdline = process.cmdline()
            zombie = process.status() == psutil.STATUS_ZOMBIE
        except (psutil.Error, OSError):
            return False
        if zombie or "logs" not in cmdline or self.container_id not in cmdline:
            return False
        self._logs_pid = pid
        return True

    async def _drain_logs(self) -> None:
        """Give the log follower a moment to copy the last lines (it ends by itself when
        the container has ended)."""
        with anyio.move_on_after(DRAIN_TIMEOUT):
            if self._logs is not None:
                await self._logs.wait()
            elif self._logs_pid is not None:  # a previous daemon's follower: not our child
                try:
                    fd = os.pidfd_open(self._logs_pid)
                except OSError:
                    return
                try:
                    await anyio.wait_readable(fd)
                finally:
                    anyio.notify_closing(fd)
                    os.close(fd)

    async def close_logs(self) -> None:
        if self._logs is not None and self._logs.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._logs.kill()
            with anyio.CancelScope(shield=True):
                await self._logs.wait()

    # --- exit -----------------------------------------------------------------------

    async def wait(self) -> ExitStatus:
        await self._watch.until(lambda: self._status is not None, self._watch_exit)
        assert self._status is not None
        return self._status

    async def _watch_exit(self) -> None:
        if self._exit is None:
            self._exit = await self._wait_engine()
        await self._drain_logs()
        self._status = self._exit

    async def _wait_engine(self) -> ExitStatus:
        runner = self.runner
        retries = 0
        while retries < _WAIT_RETRIES:
            if self._waiter is None:
                argv = [runner.executable(), *runner.global_args(self._socket), "wait", self.container_id]
                try:
                    self._waiter = await anyio.open_process(
                        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                    )
                except OSError as exc:
                    raise RunnerError(f"cannot run {runner.binary} wait: {exc.strerror}") from None
            waiter = self._waiter
            code = await waiter.wait()
            output = await _read_all(waiter.stdout)
            await _read_all(waiter.stderr)
            self._waiter = None
            await waiter.aclose()
            if code == 0:
                words = output.decode(errors="replace").split()
                with contextlib.suppress(ValueError, IndexError):
                    return await self._unless_engine_left(int(words[-1]))
            # `wait` ended without the exit code: the engine lost track of the container,
            # or went away (restarted, crashed). Ask what is there once it answers again:
            # its going away is not the container's exit.
            found, lost_at = await self._inspect_when_back()
            if not found:
                return ExitStatus()
            state = found[0].get("State") or {}
            if not state.get("Running"):
                ended_with = _exit_code(state)
                if lost_at is not None:
                    # Ended by the engine's restart, not by itself: a failure for the
                    # restart policy even when the code is 0 (its stop signal trapped).
                    return ExitStatus(exit_code=ended_with, cause=(
                        f"ended while the {runner.display} engine was away "
                        f"({describe_exit(ended_with, code_phrase='exit code')})"))
                return ExitStatus(exit_code=ended_with)
            if lost_at is not None:
                # It survived the engine (live-restore): follow it again, as before, and
                # carry out a stop asked while the engine was away (it could not be sent).
                retries = 0
                if not self._following():
                    await self.close_logs()
                    with contextlib.suppress(RunnerError):  # its output lost, not its supervision
                        await self.follow_logs(since=lost_at)
                if self._stop_asked is not None:
                    stopped = await self._stop_late(*self._stop_asked)
                    if stopped is not None:
                        return stopped
                    # The engine went away again before the stop got through: wait for
                    # it, then try again (the container keeps its record meanwhile).
                continue
            retries += 1
            await anyio.sleep(1.0)  # wait-ok: back off before reconnecting to the engine
        return ExitStatus()

    async def _unless_engine_left(self, exit_code: int) -> ExitStatus:
        """How the container ended, now that ``wait`` said ``exit_code``: its own exit, or,
        when the engine cannot be reached right after, an end by the engine's shutdown
        (``systemctl restart docker`` stops every container, then the engine). That is a
        failure for the restart policy whatever the code, and it is told only once the
        engine is back: a restart tried meanwhile could only fail and be counted."""
        try:
            await self.runner.inspect([self.container_id], self._socket)
        except EngineUnreachable:
            pass
        except RunnerError:
            return ExitStatus(exit_code=exit_code)
        else:
            return ExitStatus(exit_code=exit_code)
        await self._inspect_when_back()
        return ExitStatus(exit_code=exit_code, cause=(
            f"stopped by the {self.runner.display} engine's shutdown "
            f"({describe_exit(exit_code, code_phrase='exit code')})"))

    async def _stop_late(self, stop_signal: int, grace: float) -> ExitStatus | None:
        """The stop that failed while the engine was away, now that it is back: the
        container is stopped and removed, as ``stop()`` would have done. None if the
        engine went away again first (nothing known to be stopped)."""
        runner = self.runner
        found: list[dict[str, Any]] = []
        try:
            await self._terminate(stop_signal, grace)
            found = await runner.inspect([self.container_id], self._socket)
        except EngineUnreachable:
            return None
        except RunnerError:
            pass  # the container is gone already, or cannot be inspected: removed below
        await runner.remove(self.container_id, self._socket)
        exit_code = ((found[0].get("State") or {}) if found else {}).get("ExitCode")
        return ExitStatus(exit_code=exit_code if isinstance(exit_code, int) else None)

    async def _inspect_when_back(self) -> tuple[list[dict[str, Any]], float | None]:
        """The engine's description of the container, waiting (and saying so, once) while
        the engine cannot be reached; and since when it could not be, if it could not."""
        delay = self.retry_first
        lost_at: float | None = None
        while True:
            mark = self._engine_mark()
            try:
                found = await self.runner.inspect([self.container_id], self._socket)
            except RunnerError as exc:
                if lost_at is None:
                    lost_at = time.time()
                    self._report(f"lost the {self.runner.display} engine ({exc}); "
                                 "waiting for it to come back")
                    if self.engine is not None:
                        self.engine(False)
                delay = await self._engine_return(delay, mark)
                continue
            if lost_at is not None:
                state = (found[0].get("State") or {}) if found else {}
                outcome = ("the container still runs" if state.get("Running") else
                           f"the container ended meanwhile ({describe_exit(_exit_code(state), code_phrase='exit code')})"
                           if found else "the container is gone")
                self._report(f"the {self.runner.display} engine is back after "
                             f"{time.time() - lost_at:.1f} s; {outcome}")
                if self.engine is not None:
                    self.engine(True)
            return found, lost_at

    def _engine_mark(self) -> int:
        """What :meth:`_engine_return` compares with to tell a return (none here)."""
        return 0

    async def _engine_return(self, delay: float, mark: int) -> float:
        """Wait before asking the engine again; the next delay. The CLI has no event for
        the engine's return: ask again, less and less often."""
        await anyio.sleep(delay)  # wait-ok: backoff while the engine is away
        return min(self.retry_max, delay * 2)

    def _report(self, message: str) -> None:
        log.warning("%s: %s", self._spec.fqn, message)
        if self.notice is not None:
            self.notice(message)

    def _following(self) -> bool:
        """Whether the log follower still runs (it dies with the engine's connection)."""
        if self._logs is not None:
            return self._logs.returncode is None
        if self._logs_pid is None:
            return not (self._spec.stdout_path or self._spec.stderr_path)
        try:
            return psutil.Process(self._logs_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    # --- stop -----------------------------------------------------------------------

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        stop_signal = valid_stop_signal(stop_signal)
        grace = max(0.0, grace)
        if self._stop_done is not None and not self._stop_failed:
            await self._stop_done.wait()  # a stop is under way: share its outcome
            if not self._stop_failed:
                return await self.wait()
            # It could not be sent (its engine went away): this one tries again.
        self._stop_done = anyio.Event()
        self._stop_failed = False  # a stop asked again after a failed one tries again
        self._stop_asked = (stop_signal, grace)
        runner, socket, ref = self.runner, self._socket, self.container_id
        try:
            if self._status is None and self._exit is None:
                try:
                    await self._terminate(stop_signal, grace)
                except BaseException as exc:
                    self._stop_failed = True
                    with anyio.CancelScope(shield=True):
                        await runner.remove(ref, socket)
                        await self.close_logs()
                    if isinstance(exc, EngineUnreachable):
                        # wait() carries it out once the engine answers (see _wait_engine).
                        raise EngineUnreachable(f"{exc}; the container is stopped when the engine answers again") from None
                    raise
            with anyio.fail_after(KILL_TIMEOUT + DRAIN_TIMEOUT):
                status = await self.wait()
            await runner.remove(ref, socket)
            return status
        finally:
            self._stop_done.set()

    async def _terminate(self, stop_signal: int, grace: float) -> None:
        runner, socket, ref = self.runner, self._socket, self.container_id
        if stop_signal == self.run_signal:
            await runner.stop_container(ref, socket, grace)
            return
        result = await runner.call(["kill", "--signal", str(stop_signal), ref], socket)
        if result.returncode == 0:
            with anyio.move_on_after(grace):
                await self.wait()
                return
        killed = await runner.call(["kill", "--signal", "KILL", ref], socket)
        if killed.returncode != 0:
            message = engine_message(killed.stderr)
            if runner.unreachable(message, socket) is not None:
                raise runner.error("kill", killed.stderr, socket)
            # "is not running", "no such container": it has ended already.


async def _read_all(stream: anyio.abc.ByteReceiveStream | None) -> bytes:
    if stream is None:
        return b""
    chunks = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks)
