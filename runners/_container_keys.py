"""The docker/podman block's common keys beyond image, ports and volumes: how each is
checked, and what it becomes in a create request. The names are compose's: ``env_file``,
``labels``, ``working_dir``, ``hostname``, ``extra_hosts``, ``mem_limit``, ``cpus``,
``init``, ``user``, and ``pull`` (compose's ``pull_policy``, with the values Hive's
container runners always had: ``always``, ``missing``, ``never``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .base import ConfigProblem, RunnerError

if TYPE_CHECKING:
    from ._container import ContainerConfig

__all__ = [
    "PullPolicy", "check_common", "common_body", "env_file_values", "host_entries",
    "parse_memory", "pull_policy",
]

PullPolicy = Literal["always", "missing", "never"]

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# The smallest limit the engines take (Docker refuses less than 6 MiB).
MEMORY_MIN = 6 * 1024**2
_ENV_NAME = re.compile(r"^[^=\s\0]+$")


def parse_memory(value: str | int) -> int:
    """Bytes of a ``mem_limit``: an int, or ``512m``, ``1g``, ``256MiB`` (k, m, g are
    powers of 1024); ValueError saying what is expected."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _MEMORY.match(str(value))
        if match is None:
            raise ValueError(f"invalid memory size {value!r}: expected bytes or a size like 512m, 1g")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MEMORY_MIN:
        raise ValueError(f"memory size {value!r} is below the engines' minimum of 6m")
    return size


def pull_policy(pull: PullPolicy | None, deny_pull: bool) -> PullPolicy:
    """The pull policy: ``pull``, else ``never`` with ``deny_pull``, else ``missing``."""
    return pull or ("never" if deny_pull else "missing")


def host_entries(extra_hosts: Sequence[str] | Mapping[str, str]) -> list[str]:
    """``extra_hosts`` as ``HOST:ADDRESS`` entries (a mapping is ``{HOST: ADDRESS}``)."""
    if isinstance(extra_hosts, Mapping):
        return [f"{host}:{address}" for host, address in extra_hosts.items()]
    return [entry.replace("=", ":", 1) if ":" not in entry else entry for entry in extra_hosts]


def check_common(config: ContainerConfig) -> list[ConfigProblem]:
    """The problems of the common keys of a ``ContainerConfig`` (typed: see there)."""
    problems = []
    if config.working_dir is not None and not config.working_dir.startswith("/"):
        problems.append(ConfigProblem(("working_dir",), f"'{config.working_dir}' is not an absolute path "
                                      "inside the container (e.g. /app)"))
    for key in config.labels:
        if key.startswith("hive."):
            problems.append(ConfigProblem(("labels", key), f"'{key}': labels hive.* are Hive's own "
                                          "(hive.fqn, hive.config-hash ...); use another prefix"))
    for index, entry in enumerate(host_entries(config.extra_hosts)):
        host, _, address = entry.partition(":")
        if not host or not address:
            where: tuple[str | int, ...] = ("extra_hosts", index) if isinstance(config.extra_hosts, list) \
                else ("extra_hosts", host)
            problems.append(ConfigProblem(where, f"'{entry}': expected HOST:ADDRESS (e.g. db:10.0.0.5)"))
    if config.mem_limit is not None:
        try:
            parse_memory(config.mem_limit)
        except ValueError as exc:
            problems.append(ConfigProblem(("mem_limit",), str(exc)))
    if config.cpus is not None and not config.cpus > 0:
        problems.append(ConfigProblem(("cpus",), f"cpus must be more than 0 (e.g. 0.5), not {config.cpus:g}"))
    if config.user is not None and config.security is not None and config.security.user is not None \
            and config.user != config.security.user:
        problems.append(ConfigProblem(("user",), "user and security.user differ: keep one"))
    if config.deny_pull and config.pull not in (None, "never"):
        problems.append(ConfigProblem(("pull",), f"pull: {config.pull} contradicts deny_pull: keep one"))
    for index, path in enumerate(_env_files(config.env_file)):
        if not path.strip():
            problems.append(ConfigProblem(("env_file", index), "an env_file path is empty"))
    return problems


def _own_user(config: ContainerConfig) -> bool:
    """Whether ``user`` says who runs the container (``security.user``, when set, has)."""
    return bool(config.user) and not (config.security is not None and config.security.user)


def _env_files(env_file: str | list[str] | None) -> list[str]:
    if env_file is None:
        return []
    return [env_file] if isinstance(env_file, str) else list(env_file)


def env_file_values(env_file: str | list[str] | None, project_dir: str, env: Mapping[str, str]) -> dict[str, str]:
    """The variables of the ``env_file`` files (relative paths against the project), in
    order, a later file winning. Docker's format: ``KEY=VALUE`` a line, ``#`` comments
    and blank lines skipped, no quoting; a bare ``KEY`` takes the service's own value
    (``env``), if it has one. RunnerError naming the file and line of what is wrong."""
    values: dict[str, str] = {}
    for name in _env_files(env_file):
        path = os.path.join(project_dir, os.path.expanduser(name.strip()))
        try:
            with open(path, encoding="utf-8") as source:
                lines = source.read().splitlines()
        except FileNotFoundError:
            raise RunnerError(f"env_file {name}: no such file ({os.path.abspath(path)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise RunnerError(f"env_file {name}: cannot read it: {reason}") from None
        for number, line in enumerate(lines, 1):
            text = line.lstrip()
            if not text or text.startswith("#"):
                continue
            key, equals, value = text.partition("=")
            if not _ENV_NAME.match(key):
                raise RunnerError(f"{name}:{number}: invalid variable name {key!r} (expected KEY=VALUE)")
            if equals:
                values[key] = value
            elif key in env:
                values[key] = env[key]
    return values


def common_body(config: ContainerConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the common keys add to a create request: (top-level fields, HostConfig)."""
    body: dict[str, Any] = {}
    host: dict[str, Any] = {}
    if config.working_dir:
        body["WorkingDir"] = config.working_dir
    if config.hostname:
        body["Hostname"] = config.hostname
    if _own_user(config):
        body["User"] = config.user
    if config.extra_hosts:
        host["ExtraHosts"] = host_entries(config.extra_hosts)
    if config.mem_limit is not None:
        host["Memory"] = parse_memory(config.mem_limit)
    if config.cpus is not None:
        host["NanoCpus"] = round(config.cpus * 1e9)
    if config.init:
        host["Init"] = True
    return body, host
