"""The runner contract: how the daemon starts, watches, stops and adopts a service.

A runner turns a :class:`RunSpec` into a running thing (a process, a container) and
hands back a :class:`ServiceHandle`. The daemon never looks inside: it awaits
``wait()`` to learn of the exit (the runner reacts to the kernel or the engine, it does
not poll), calls ``stop()`` to end it, and persists ``record()`` so that a daemon started
later can ``adopt()`` what is still running.

Runners are found through the ``hive.runners`` entry-point group; the built-in ones are
registered the same way a third-party one is.

**The runner's block.** A runner owns the shape of its block in ``hive.yaml``
(``runner: {type: docker, docker: {...}}``): its class attribute :attr:`Runner.Config` is
a msgspec Struct, the one definition of the block's keys, their types and defaults.
``hive config validate`` (and every load of a hive.yaml) finds it through the entry point
and checks the block against it: an unknown key is a warning with a did-you-mean, a wrong
type an error naming the file, line and key. The runner decodes ``RunSpec.config`` into
its Config once with :func:`decode_config` and reads typed fields. Derive the Struct from
:class:`RunnerConfig` to add checks no type can say (a blank ``image``, a port entry that
will be ignored) in :meth:`RunnerConfig.check`; both sides report them. A runner that
declares no Config (``None``, the default) gets its block as is, and nothing in it is
checked before it starts.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import anyio
import msgspec

__all__ = [
    "CheckExec", "CheckRun", "ConfigProblem", "ExitStatus", "RunSpec", "Runner", "RunnerConfig", "RunnerError", "ServiceHandle",
    "StopFailed", "decode_config", "describe_exit", "signal_name", "valid_stop_signal",
]


class RunnerError(Exception):
    """A start or stop failed for a reason the user can act on; the message says it."""


class StopFailed(RunnerError):
    """``stop_many`` could not stop some of its instances now (the others are stopped):
    ``failed`` pairs each such handle with why."""

    def __init__(self, failed: list[tuple[ServiceHandle, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in failed))
        self.failed = failed


def valid_stop_signal(number: int) -> int:
    """``number`` if it is a signal a stop may send; RunnerError otherwise."""
    if not isinstance(number, int) or not 0 < number < signal.NSIG:
        raise RunnerError(f"invalid stop signal {number!r}")
    return int(number)


class ConfigProblem(msgspec.Struct, frozen=True):
    """Something wrong in a runner's block that its types do not say. ``path`` is the key
    path inside the block (``("security", "user")``, ``("ports", 2)``). A warning is
    reported and the block still used (the runner ignores that part); an error refuses it."""

    path: tuple[str | int, ...]
    message: str
    warning: bool = False


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Base of a runner's :attr:`Runner.Config`: a frozen value, keys given by keyword.

    Unknown keys are not refused here: ``hive config validate`` warns about them, and the
    runner ignores them, so a typo never stops a service that ran before."""

    def check(self) -> list[ConfigProblem]:
        """Problems of a well-typed block (a blank required string, an entry the runner
        will ignore); none by default."""
        return []


ConfigT = TypeVar("ConfigT", bound=msgspec.Struct)


def decode_config(block: Mapping[str, Any], schema: type[ConfigT], runner: str) -> ConfigT:
    """``block`` (a ``RunSpec.config``) as the runner's ``schema``; RunnerError naming the
    runner, what is wrong and where, as msgspec's ``$.path`` (``invalid docker block:
    Expected `bool`, got `str` - at `$.deny_pull```).

    Not strict: a value a runtime template rendered (``"8080"``) still fills a number.
    The errors of :meth:`RunnerConfig.check` are raised the same way; its warnings were
    the config layer's to report."""
    try:
        config = msgspec.convert(dict(block), schema, strict=False)
    except msgspec.ValidationError as exc:
        raise RunnerError(f"invalid {runner} block: {exc}") from None
    if isinstance(config, RunnerConfig):
        for problem in config.check():
            if not problem.warning:
                where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in problem.path)
                raise RunnerError(f"invalid {runner} block: {problem.message} - at `${where}`")
    return config


def signal_name(number: int) -> str:
    """``9`` → ``SIGKILL``; a number with no name → ``signal 99``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(
    exit_code: int | None, signal_number: int | None = None, *, code_phrase: str = "exited with code"
) -> str:
    """How a process ended, in the words every message uses: ``exited with code 3``,
    ``killed by SIGKILL``.

    A signal wins over a code, and a negative ``exit_code`` is a signal too (what
    ``subprocess`` and anyio report). ``code_phrase`` goes before the number, for messages
    that read as a noun rather than a verb: ``Build failed …: exit code 2``, a health check's
    ``exit status 3``. Neither known: ``exited (status unknown)``."""
    if signal_number is None and exit_code is not None and exit_code < 0:
        signal_number = -exit_code
    if signal_number is not None:
        return f"killed by {signal_name(signal_number)}"
    if exit_code is None:
        return "exited (status unknown)"
    return f"{code_phrase} {exit_code}"


class RunSpec(msgspec.Struct, kw_only=True):
    """Everything a runner needs to start one instance of a service."""

    fqn: str  # "source:service" or "source:service#N"
    command: str = ""  # script: the `run` text, runtime templates already resolved
    working_dir: str = "."
    # The complete environment of the child. The script runner adds HIVE_RUN_ID (one per
    # start) to find every process of the instance, even ones that left its session.
    env: dict[str, str] = {}
    # The names in ``env`` the service sets itself (hive.yaml, used services, Hive's own
    # HIVE_*), even to the daemon's value: a container gets these and no other of the
    # daemon's (its LANG or TZ reach it when the service sets them).
    own_env: frozenset[str] = frozenset()
    shell: str | None = None  # None: exec directly when the command needs no shell
    stdout_path: str = ""  # capture files the child appends to (the daemon follows them)
    stderr_path: str = ""
    # The daemon reads output from ServiceHandle.take_output() when the runner offers it
    # (the script runner's memory captures: no disk); the paths then only say whether
    # each stream is captured.
    memory_capture: bool = False
    stop_signal: int = int(signal.SIGTERM)
    stop_grace: float = 10.0
    config: dict[str, Any] = {}  # the runner's own block from hive.yaml (docker, …)
    # A blue-green generation's colour ("blue", "green"), "" otherwise: two generations
    # run at once, so a container runner names each colour's container apart.
    color: str = ""


class ExitStatus(msgspec.Struct, frozen=True):
    """How an instance ended. Both None: unknown (an adopted process is not our child).

    ``cause``, when set, says the instance was ended by something else than itself (its
    container engine restarting): never a success, whatever the code."""

    exit_code: int | None = None
    signal: int | None = None
    cause: str = ""

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.cause

    def describe(self) -> str:
        if self.cause:
            return self.cause
        if self.exit_code is None and self.signal is None:
            return "exited (status unknown: adopted process)"
        return describe_exit(self.exit_code, self.signal)


class CheckRun(msgspec.Struct, frozen=True, kw_only=True):
    """A cmd health check run inside an instance: its exit code (None: it did not end
    within its timeout) and the last non-blank line of its output (stdout or stderr)."""

    exit_code: int | None
    output: str = ""


# Runs a cmd health check inside an instance: (command, timeout in seconds) → CheckRun;
# RunnerError when it cannot be run (the engine is away, the container not running).
CheckExec = Callable[[str, float], Awaitable[CheckRun]]


class ServiceHandle(ABC):
    """One running instance."""

    pid: int | None = None
    container_id: str | None = None
    # Set by the daemon: where the handle tells of something that happens to its
    # instance short of an exit (its engine went away and came back); a line in its log.
    notice: Callable[[str], None] | None = None
    # Set by the daemon: told False when the instance's engine goes away (whether the
    # instance still runs is then not known) and True when the engine answers again.
    engine: Callable[[bool], None] | None = None

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """What the daemon persists so a later daemon can adopt this instance."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Return when the instance has ended (may be awaited by several tasks)."""

    @abstractmethod
    async def stop(self, stop_signal: int, grace: float) -> ExitStatus:
        """Signal, wait up to ``grace`` seconds, then kill; nothing it started survives."""

    def check_exec(self) -> CheckExec | None:
        """What runs ``cmd`` health checks inside the instance (a container's exec); None
        when the instance is a host process: its checks run on the host."""
        return None

    def leftovers(self) -> int:
        """How many processes of the instance are still alive (0 when none)."""
        return 0

    async def outdated(self) -> str | None:
        """Why the instance no longer runs what its configuration names, through
        something outside hive.yaml (its compose file edited, its image rebuilt under the
        same tag); None if it does, or cannot be told. ``hive source reload`` restarts a
        service one of whose instances says so."""
        return None

    def take_output(self) -> tuple[int, int] | None:
        """The daemon's read-write descriptors on the instance's (stdout, stderr) capture
        files when the runner keeps them itself (the script runner's memory captures),
        handed over once: the caller closes them. None: the capture files at
        ``RunSpec.stdout_path`` and ``stderr_path`` are what to follow."""
        return None

    def detach(self) -> None:
        """The daemon exits (its shutdown deadline passed) with this instance still up:
        a stop under way, cancelled now, must leave it running for the next daemon to
        adopt rather than kill it. The default has nothing to undo."""
        return None


class Runner(ABC):
    name: ClassVar[str]
    # The keys of the runner's hive.yaml block (see the module docstring); None: not declared.
    Config: ClassVar[type[msgspec.Struct] | None] = None

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Take the daemon config's ``[runners.NAME]`` table (after construction, and
        again on reload); raise RunnerError naming the key when it is wrong. A runner
        with settings overrides this; the default takes none."""
        if settings:
            keys = ", ".join(sorted(settings))
            raise RunnerError(f"runner {self.name!r} has no settings (got: {keys})")

    @abstractmethod
    async def start(self, spec: RunSpec) -> ServiceHandle:
        """Start one instance; raise RunnerError with a clear message if it cannot."""

    @abstractmethod
    async def adopt(self, spec: RunSpec, record: dict[str, Any]) -> ServiceHandle | None:
        """Take over an instance a previous daemon started; None if it is gone."""

    async def stop_orphan(self, fqn: str, record: dict[str, Any], grace: float) -> bool:
        """Stop the instance ``fqn`` that ``record`` (its handle's ``record()``) names,
        whose service no longer exists: there is no spec, only its name. True if it was
        running. RunnerError if it cannot be done now (its engine is away). The default
        adopts it with a bare spec and stops it; a runner whose ``adopt()`` needs the
        service's configuration overrides this."""
        handle = await self.adopt(RunSpec(fqn=fqn), record)
        if handle is None:
            return False
        await handle.stop(int(signal.SIGTERM), grace)
        return True

    async def run_once(self, spec: RunSpec, output: Callable[[str, str], None]) -> int:
        """Run ``spec`` to its end (a hook step) and return its exit code; each line it
        prints goes to ``output("stdout" | "stderr", line)``. Cancelled, it leaves nothing
        running. Runners that cannot run one-shot raise RunnerError (the default)."""
        raise RunnerError(f"the {self.name} runner cannot run hook steps")

    async def stop_many(
        self, handles: Sequence[ServiceHandle], stop_signal: int, grace: float
    ) -> None:
        """Stop several instances (``hive down``, a daemon shutdown): what ``stop()`` does
        to each; StopFailed names those it could not stop. Runners that can do it in one
        sweep override this."""
        failures: list[tuple[ServiceHandle, str]] = []

        async def stop_one(handle: ServiceHandle) -> None:
            # One that cannot be stopped (its engine is away) must not cut the others short.
            try:
                await handle.stop(stop_signal, grace)
            except RunnerError as exc:
                failures.append((handle, str(exc)))

        async with anyio.create_task_group() as stops:
            for handle in handles:
                stops.start_soon(stop_one, handle)
        if failures:
            raise StopFailed(failures)

    async def discover(self, spec: RunSpec, marker: str) -> list[dict[str, Any]]:
        """Records of running instances of ``spec.fqn`` that no record names.

        A daemon killed right after a start may not have saved the record; the next one
        finds such an instance by its environment (``marker`` is the value of the
        supervisor's marker variable) and adopts it instead of starting a second copy.
        Runners that cannot tell return nothing.
        """
        return []
