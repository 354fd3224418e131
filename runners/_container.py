"""The ``docker`` / ``podman`` block, and what the container runners make of it.

The runner is :mod:`runners._container_runner`, its handle :mod:`runners._container_handle`
(both on the engine's HTTP API); compose's containers go through the same two. Here, what
they share:

- **The block.** :class:`ContainerConfig` is the one definition of the ``docker`` and
  ``podman`` keys (``hive config validate`` checks a hive.yaml against it); the runner
  decodes ``RunSpec.config`` into it once per start, adoption or hook step, and the handle
  keeps only the engine's socket from it.
- **Identity.** The container is named ``container_name`` or, by default,
  ``hive-<source>.<service>[.<N>]`` (the ``.`` cannot occur in Hive names, so two sources
  never collide; a name that needed sanitising gets a hash of the FQN appended), and
  ``.blue`` or ``.green`` after it for a blue-green generation (``RunSpec.color``: the
  next generation starts while the old one runs, so they need two names). It carries the
  labels ``hive.fqn`` (a hook step's container: ``hive.hook-of``, it is no instance),
  ``hive.source``, ``hive.config-hash`` (the first 16 hex of the sha256 of the canonical
  JSON of the block, the image and the environment passed) and ``hive.stop-signal``.
- **Environment.** ``RunSpec.env`` is the complete environment a script would get, mostly
  the daemon's own (PATH, HOME, ...), which must not leak into a container. What is passed
  is every entry of ``spec.env`` the service sets itself (``spec.own_env``: its own
  variables, even to the daemon's value, Hive's ``HIVE_*`` variables and whatever a used
  service provides) or that is *not* in the daemon's ``os.environ`` with the same value,
  then the ``env_file`` files, then the block's ``environment`` on top. The values go in
  the create request's ``Env`` (:func:`create_body`), sent over the engine's socket: never
  on a command line, so never in ``ps``.
- **The create request.** :func:`create_body` is the block as the Engine API takes it
  (ports, volumes, security, the common keys of :mod:`runners._container_keys`).
- **Engine messages.** :func:`engine_message` keeps the line of an engine's (or
  compose's) error output that says what went wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal as signals
from collections.abc import Mapping
from typing import Any

import msgspec

from ._container_keys import PullPolicy, check_common, common_body, env_file_values
from .base import ConfigProblem, RunnerConfig, RunnerError, RunSpec, valid_stop_signal

__all__ = [
    "HOOK_LINE_CAP", "KILL_TIMEOUT", "ContainerConfig", "ContainerSecurity", "config_hash",
    "container_name", "create_body", "engine_message", "missing_image", "parse_port", "parse_volume",
    "passed_environment", "signal_name", "spec_container_name",
]

# How long a container gets to vanish after SIGKILL before a stop gives up on it.
KILL_TIMEOUT = 10.0
# A line of a hook container's output is cut there.
HOOK_LINE_CAP = 64 * 1024

_NAME_OK = re.compile(r"[^a-zA-Z0-9_.-]")
_PORT = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp|sctp))?$")


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


# --- identity, ports, volumes, environment -------------------------------------------------


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
    """``HOST:CONTAINER[/proto]`` as ``ADDRESS:HOST:CONTAINER/proto`` bound to ``bind_ip``
    (:func:`create_body` splits it); None for an entry without ``:``, which the format
    ignores (``hive config validate`` warns)."""
    if ":" not in entry:
        return None
    match = _PORT.match(entry.strip())
    if match is None or not all(0 < int(port) < 65536 for port in match.group(1, 2)):
        raise RunnerError(f"invalid port {entry!r}: expected HOST:CONTAINER[/tcp|udp|sctp]")
    host, inner, proto = match.group(1), match.group(2), match.group(3) or "tcp"
    address = f"[{bind_ip}]" if ":" in bind_ip else bind_ip
    return f"{address}:{int(host)}:{int(inner)}/{proto}"


def parse_volume(entry: str, project_dir: str) -> str:
    """``SRC:DST[:mode]`` as a bind (``HostConfig.Binds``); a ``./`` or ``../`` source is
    resolved against ``project_dir`` and refused if it leads outside it.

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


# --- the create request --------------------------------------------------------------------


def create_body(spec: RunSpec, config: ContainerConfig, env: Mapping[str, str], digest: str,
                *, hook: bool = False) -> dict[str, Any]:
    """The ``/containers/create`` body of the block, with ``env`` (see
    :func:`passed_environment`) and the config hash ``digest``. A hook step's container is
    labelled ``hive.hook-of``, not ``hive.fqn``: it is not an instance, and discovery must
    not find it."""
    stop_signal = valid_stop_signal(spec.stop_signal)
    security = config.security or ContainerSecurity()
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for entry in config.ports:
        published = parse_port(entry, config.bind_ip or "127.0.0.1")
        if published is None:
            continue
        address, host, inner = published.rsplit(":", 2)
        key = inner  # "80/tcp"
        exposed[key] = {}
        bindings.setdefault(key, []).append({"HostIp": address.strip("[]"), "HostPort": host})
    host_config: dict[str, Any] = {
        "PortBindings": bindings,
        "Binds": [parse_volume(entry, spec.working_dir or ".") for entry in config.volumes],
        "CapDrop": ["ALL"] if security.cap_drop_all else [],
        "CapAdd": list(security.cap_add),
        "SecurityOpt": (["no-new-privileges"] if security.no_new_privileges else []) + list(security.security_opt),
        "ReadonlyRootfs": security.read_only,
    }
    if config.network_mode:
        host_config["NetworkMode"] = config.network_mode
    common, common_host = common_body(config)
    host_config.update(common_host)
    body: dict[str, Any] = {
        "Image": config.image.strip(),
        "Env": [f"{key}={value}" for key, value in env.items()],
        "Labels": {**config.labels, "hive.hook-of" if hook else "hive.fqn": spec.fqn,
                   "hive.source": spec.fqn.partition(":")[0],
                   "hive.config-hash": digest, "hive.stop-signal": str(stop_signal)},
        "StopSignal": signal_name(stop_signal),
        "ExposedPorts": exposed,
        "HostConfig": host_config,
    }
    if config.command is not None:
        body["Cmd"] = list(config.command)
    if config.entrypoint is not None:
        body["Entrypoint"] = list(config.entrypoint) or [""]
    if security.user:
        body["User"] = security.user
    body.update(common)
    return body


def signal_name(number: int) -> str:
    """A signal as the engine's API takes it (``SIGTERM``; a number it has no name for)."""
    try:
        return signals.Signals(number).name
    except ValueError:
        return str(number)
