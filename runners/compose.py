"""The compose runner: a service is one service of a compose file.

``{file, service}``: the file (relative to the project) and the compose service Hive runs
(:class:`ComposeConfig`, with ``command`` for hook steps).
Compose creates the container; from then on it is supervised like a docker or podman one,
through the same engine runner and on the engine's API, Docker's or podman's
(:class:`ComposeHandle`: exit from the engine's event stream, output from the logs
endpoint, signals through ``/kill``, ``cmd`` checks through the exec endpoints; no
helper process).

- **Implementation.** The first of ``docker compose``, ``docker-compose``,
  ``podman compose``, ``podman-compose`` that answers ``version`` is used, found when a
  service first starts; ``[runners.compose] command = ["podman-compose"]`` in the daemon
  config names one instead. The engine that holds the containers follows from it (podman
  for the podman ones, docker otherwise).
- **Start.** ``<compose> -f - -p PROJECT up -d --no-deps --force-recreate SERVICE`` in the
  file's directory, with the service's environment (the compose file may interpolate
  ``${HIVE_INSTANCE}``, a port, a used service's variables); compose reads the file on its
  standard input as this service sees it (:mod:`runners._compose_file`: the other
  services' ``$`` escaped, so their required variables are not this one's). Dependencies are Hive's business (``depends_on``),
  so compose starts only this service. The project is ``hive-<source>`` (instance N > 0:
  ``hive-<source>-<N>``), so the compose services of one source share a network, and
  instances do not recreate each other. The container is then found by compose's own
  labels (``com.docker.compose.project``, ``com.docker.compose.service``). The project's
  networks go with its last container (:mod:`runners._compose_networks`).
- **Adoption.** The record keeps the container id, the project, the service, and a hash of
  what defines the service: the compose file's content, the block, and the variables
  that are not the daemon's own (those a container runner passes, see
  :func:`runners._container.passed_environment`). The daemon's environment (its working
  directory's ``PWD``, a shell's ``OLDPWD``, ...) is left out: a daemon started again from
  another directory or shell adopts the container. A later daemon adopts the container if
  it runs with those labels and the hash is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio

from ._compose_file import one_service_document
from ._compose_networks import PROJECT_LABEL, ProjectNetworks
from ._container import HOOK_LINE_CAP, engine_message
from ._container_handle import ContainerHandle
from ._container_runner import ContainerRunner
from ._engine_api import ApiError, filters
from .base import (
    ConfigProblem,
    ExitStatus,
    Runner,
    RunnerConfig,
    RunnerError,
    RunSpec,
    decode_config,
)
from .docker import DockerRunner
from .output import run_streaming
from .podman import PodmanRunner

__all__ = ["IMPLEMENTATIONS", "ComposeConfig", "ComposeHandle", "ComposeRunner"]

# Tried in this order when the daemon config names none.
IMPLEMENTATIONS: tuple[tuple[str, ...], ...] = (
    ("docker", "compose"),
    ("docker-compose",),
    ("podman", "compose"),
    ("podman-compose",),
)
SERVICE_LABEL = "com.docker.compose.service"
# Deadline of a compose command other than `up` (which pulls: not bounded).
CALL_TIMEOUT = 60.0
_PROJECT_OK = re.compile(r"[^a-z0-9_-]")


class ComposeConfig(RunnerConfig, frozen=True, kw_only=True):
    """The ``compose`` block."""

    file: str  # the compose file, relative to the project
    service: str  # the compose service to run
    command: list[str] = []  # a hook step's command (`run SERVICE [command]`)

    def check(self) -> list[ConfigProblem]:
        problems = []
        if not self.file.strip():
            problems.append(ConfigProblem(("file",), "file is required (the compose file, relative to the project)"))
        if not self.service.strip():
            problems.append(ConfigProblem(("service",), "service is required (the compose service to run)"))
        return problems


def project_name(fqn: str) -> str:
    """``hive-<source>``, ``hive-<source>-<N>`` for instance N > 0 (compose's alphabet)."""
    source, _, rest = fqn.partition(":")
    index = rest.partition("#")[2]
    name = _PROJECT_OK.sub("-", f"hive-{source}".lower())
    return f"{name}-{index}" if index and index != "0" else name


class ComposeHandle(ContainerHandle):
    """A container compose created, supervised through the engine's API: its exit from
    the engine's event stream, its output from the logs endpoint, its signals from
    ``/kill``; no helper process."""

    def __init__(self, *, project: str, service: str, networks: ProjectNetworks, compose_file: str,
                 file_digest: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.service = service
        self._networks = networks
        self._file = compose_file
        self._file_digest = file_digest  # of the file compose was given (or adoption checked)

    async def outdated(self) -> str | None:
        """The compose file changed since the container was made from it, or the image
        it names was rebuilt."""
        if _file_digest(self._file) != self._file_digest:
            return f"compose file {self._file} changed"
        return await super().outdated()

    def record(self) -> dict[str, Any]:
        return {**super().record(), "runner": "compose", "project": self.project, "service": self.service}

    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        """Stop and remove the container, then the project's networks if it was their
        last user (``hive down`` leaves none)."""
        status = await super().stop(stop_signal, grace)
        await self._networks.remove_unused(self.runner, self.project, self._socket)
        return status

    def may_have_ended(self) -> bool:
        return True  # compose started it before Hive knew its id


class ComposeRunner(Runner):
    """``compose`` block: ``{file, service}``."""

    name: ClassVar[str] = "compose"
    Config: ClassVar[type[ComposeConfig]] = ComposeConfig

    def __init__(self) -> None:
        self._configured: list[str] | None = None  # [runners.compose] command
        self._command: list[str] | None = None  # the implementation in use
        self._lock = anyio.Lock()
        self.networks = ProjectNetworks()

    def configure(self, settings: Mapping[str, Any]) -> None:
        """``[runners.compose]``: ``command``, the implementation's argv prefix
        (``["docker", "compose"]``, ``["podman-compose"]``, a string is one word)."""
        unknown = sorted(set(settings) - {"command"})
        if unknown:
            raise RunnerError(f"unknown setting {unknown[0]!r} (known: command)")
        command = settings.get("command")
        if isinstance(command, str):
            command = [command]
        if command is not None and (
            not isinstance(command, list) or not command
            or not all(isinstance(word, str) and word for word in command)
        ):
            raise RunnerError(f"command must be a list of words like [\"docker\", \"compose\"], not {command!r}")
        self._configured = list(command) if command else None
        self._command = None

    # --- the implementation -------------------------------------------------------------

    async def implementation(self) -> list[str]:
        """The compose command in use; RunnerError naming what to install if none works."""
        async with self._lock:
            if self._command is None:
                candidates = [self._configured] if self._configured else [list(c) for c in IMPLEMENTATIONS]
                problems = []
                for candidate in candidates:
                    problem = await _probe(candidate)
                    if problem is None:
                        self._command = candidate
                        break
                    problems.append(problem)
                else:
                    if self._configured:
                        raise RunnerError(f"[runners.compose] command does not work: {problems[0]}")
                    raise RunnerError(
                        "no compose implementation found (tried docker compose, docker-compose, "
                        "podman compose, podman-compose): install one, or name it with "
                        "[runners.compose] command in config.toml"
                    )
            return self._command

    @staticmethod
    def engine_of(command: Sequence[str]) -> ContainerRunner:
        """The engine runner for containers the implementation creates."""
        program = os.path.basename(command[0])
        return PodmanRunner() if program.startswith("podman") else DockerRunner()

    # --- start ----------------------------------------------------------------------------

    def _block(self, spec: RunSpec) -> tuple[str, str, ComposeConfig]:
        """The compose file's real path, the service and the whole block."""
        config = decode_config(spec.config, ComposeConfig, self.name)
        path = os.path.join(spec.working_dir or ".", config.file)
        if not os.path.isfile(path):
            raise RunnerError(f"compose file {path} does not exist")
        return os.path.realpath(path), config.service.strip(), config

    def _hash(self, spec: RunSpec, path: str) -> str:
        try:
            with open(path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        except OSError as exc:
            raise RunnerError(f"cannot read compose file {path}: {exc.strerror}") from None
        # Only what defines the project: the daemon's own environment differs from one
        # start of the daemon to the next (PWD, a login shell's variables).
        own = {key: value for key, value in spec.env.items() if os.environ.get(key) != value}
        canonical = json.dumps(
            {"config": spec.config, "file": content, "env": own},
            sort_keys=True, separators=(",", ":"), default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def _argv(self, command: Sequence[str], path: str, project: str, view: bytes | None = None) -> list[str]:
        """``<compose> -f FILE -p PROJECT``; ``-f -`` when compose reads ``view`` (the
        file as one service sees it, :func:`one_service_document`) on its standard input,
        run in the file's directory (see :meth:`_compose`)."""
        argv = [*command, "-f", path if view is None else "-", "-p", project]
        if os.path.basename(command[0]) == "podman-compose":
            argv[1:1] = ["--in-pod", "false"]  # one container per service, as docker compose
        return argv

    async def _compose(self, argv: Sequence[str], spec: RunSpec, action: str, path: str,
                       view: bytes | None = None) -> None:
        """Run compose (``view``: the file it reads on its standard input) in the compose
        file's directory, its project directory either way."""
        try:
            with anyio.fail_after(None if action == "up" else CALL_TIMEOUT):
                result = await anyio.run_process(
                    list(argv), check=False, env=spec.env or None, cwd=os.path.dirname(path),
                    **({"input": view} if view is not None else {"stdin": subprocess.DEVNULL}),
                )
        except OSError as exc:
            self._command = None
            raise RunnerError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if result.returncode != 0:
            message = _compose_message(result.stderr + result.stdout)
            engine = self.engine_of(argv).unreachable(message, None)
            raise engine or RunnerError(f"compose {action} failed: {message}")

    async def _find(self, engine: ContainerRunner, project: str, service: str) -> list[dict[str, Any]]:
        """The containers (any state) of the project's service, as the engine describes them."""
        try:
            found = await engine.api(None).request("GET", "/containers/json", params={
                "all": "1", **filters(label=[f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"])})
        except ApiError as exc:
            raise engine.api_error("list", exc) from None
        ids = [str(item["Id"]) for item in found or [] if isinstance(item, dict) and "Id" in item]
        return await engine.inspect(ids) if ids else []

    async def start(self, spec: RunSpec) -> ComposeHandle:
        path, service, _ = self._block(spec)
        digest = self._hash(spec, path)
        command = await self.implementation()
        engine = self.engine_of(command)
        project = project_name(spec.fqn)
        file_digest = _file_digest(path)  # before compose reads it: an edit meanwhile is seen
        view = one_service_document(path, service)
        argv = [*self._argv(command, path, project, view), "up", "-d", "--no-deps", "--force-recreate", service]
        async with self.networks.using(project):
            await self._compose(argv, spec, "up", path, view)
        found = await self._find(engine, project, service)
        if not found:
            raise RunnerError(f"compose up created no container for service {service!r} in {path}")
        found.sort(key=lambda info: str(info.get("Created") or ""), reverse=True)
        info = found[0]
        handle = ComposeHandle(
            project=project, service=service, networks=self.networks, compose_file=path,
            file_digest=file_digest, runner=engine, spec=spec, container_id=str(info["Id"]), name=str(info.get("Name") or "").lstrip("/"),
            config_hash=digest, run_signal=0,
        )
        try:
            await handle.follow_logs(since=None)  # a new container: all it printed is this run's
        except BaseException:
            with anyio.CancelScope(shield=True):
                await handle.close_logs()
                handle.forget()
                await engine.remove(handle.container_id)
            raise
        return handle

    async def run_once(self, spec: RunSpec, output: Callable[[str, str], None]) -> int:
        """A hook step: ``<compose> run --rm --no-deps SERVICE [command]`` (the block may
        give a ``command`` list), named ``hive-hook-<8 hex>``; removed if cancelled."""
        path, service, config = self._block(spec)
        extra = config.command
        command = await self.implementation()
        name = f"hive-hook-{secrets.token_hex(4)}"
        held: list[tuple[str, str]] = []  # docker-compose ends a failed run with its exit code

        def emit(stream: str, line: str) -> None:
            if held:
                output(*held.pop())
            if stream == "stderr" and line.strip().isdigit():
                held.append((stream, line))
            else:
                output(stream, line)

        view = one_service_document(path, service)
        project = project_name(spec.fqn)
        argv = [*self._argv(command, path, project, view),
                "run", "-T", "--rm", "--no-deps", "--name", name, service, *extra]
        engine = self.engine_of(command)
        try:
            async with self.networks.using(project):
                code = await run_streaming(argv, env=spec.env, cwd=os.path.dirname(path), output=emit,
                                           cap=HOOK_LINE_CAP, stdin=view)
        except BaseException:
            await engine.remove(name)
            raise
        finally:
            await self.networks.remove_unused(engine, project, None)
        if held and held[0][1].strip() != str(code):
            output(*held[0])
        return code

    # --- adopt ----------------------------------------------------------------------------

    async def stop_orphan(self, fqn: str, record: dict[str, Any], grace: float) -> bool:
        """Stop and remove the container through its engine (the compose file may be
        gone with the service), if its labels still name the recorded project and service."""
        container_id, project, service, engine_name = _compose_record(record)
        engine: ContainerRunner = PodmanRunner() if engine_name == "podman" else DockerRunner()
        stopped = bool(await engine.stop_leftover(
            container_id, None, grace,
            lambda labels: labels.get(PROJECT_LABEL) == project and labels.get(SERVICE_LABEL) == service,
        ))
        await self.networks.remove_unused(engine, project, None)
        return stopped

    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ComposeHandle | None:
        container_id, project, service, engine_name = _compose_record(record)
        path, wanted_service, _ = self._block(spec)
        if service != wanted_service or project != project_name(spec.fqn):
            return None
        if record.get("config_hash") != self._hash(spec, path):
            return None
        engine: ContainerRunner = PodmanRunner() if engine_name == "podman" else DockerRunner()
        found = await engine.inspect([container_id])
        if not found:
            return None
        info = found[0]
        labels = (info.get("Config") or {}).get("Labels") or {}
        if not (info.get("State") or {}).get("Running") or labels.get(PROJECT_LABEL) != project \
                or labels.get(SERVICE_LABEL) != service:
            return None
        handle = ComposeHandle(
            project=project, service=service, networks=self.networks, compose_file=path,
            file_digest=_file_digest(path), runner=engine, spec=spec,
            container_id=str(info.get("Id") or container_id),
            name=str(info.get("Name") or "").lstrip("/"), config_hash=str(record["config_hash"]),
            run_signal=0, adopted=True,
        )
        if not handle.reuse_follower(record.get("logs_pid")):
            await handle.follow_logs(since=time.time())
        return handle


def _file_digest(path: str) -> str | None:
    """The sha256 of the file's content; None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _compose_record(record: dict[str, Any]) -> tuple[str, str, str, str]:
    """(container id, project, service, engine) of a compose record; RunnerError if not one."""
    try:
        return (str(record["container_id"]), str(record["project"]), str(record["service"]),
                str(record["engine"]))
    except (KeyError, TypeError):
        raise RunnerError(f"not a compose container record: {record!r}") from None


async def _probe(command: Sequence[str]) -> str | None:
    """None if ``command version`` works; else why not."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not installed"
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            result = await anyio.run_process([*command, "version"], check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return f"cannot run {command[0]}: {exc.strerror}"
    except TimeoutError:
        return f"{' '.join(command)} version did not answer"
    if result.returncode != 0:
        return f"{' '.join(command)} version failed: {_compose_message(result.stderr + result.stdout)}"
    return None


_PULLING = re.compile(r"Pulling \S+ \((\S+)\)")
_FAILURE = re.compile(r"error|denied|not found|not known|No such|refused|failed|cannot|unable", re.IGNORECASE)


def _compose_message(output: bytes) -> str:
    """The line of compose's output that says what went wrong: the first failure (later
    ones are its consequences), with the image named if it came while pulling one."""
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        # A Python implementation (podman-compose) that raised: its last line says why.
        return engine_message(lines[-1].partition(": ")[2] or lines[-1])
    pulling = None
    for line in lines:
        match = _PULLING.search(line)
        if match is not None:
            pulling = match.group(1)
        elif _FAILURE.search(line):
            message = engine_message(line)
            return f"cannot pull image {pulling}: {message}" if pulling else message
    return engine_message(lines[-1] if lines else "no error message")
