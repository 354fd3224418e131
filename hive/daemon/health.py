"""Health checks of one running service instance (``hive.yaml`` §6, spec S).

A :class:`HealthMonitor` runs a service's checks until it is cancelled and keeps one overall
verdict:

* **healthy** when the last result of *every* check is a pass. Before the first verdict a single
  pass of every check is enough (no need to wait for ``retries`` passes); after an unhealthy
  verdict, one pass of every check makes the service healthy again;
* **unhealthy** when some check has failed ``retries`` times in a row (failures that count; see
  ``start_period``);
* otherwise unchanged — ``None`` (unknown) until the first verdict.

Each check runs in its own task on its own schedule: the first probe at once, then one every
``interval`` seconds (ticks are aligned on the start time, so intervals do not drift; a probe that
overruns its tick skips the ticks it missed, it never bursts). A probe is bounded by the check's
``timeout``. During the first ``start_period`` seconds failures do not count toward ``retries``
(probes started in that window); a pass counts at once and also ends the start period of that check
(Docker's semantics).

Check types:

* ``http``: ``GET``/``HEAD``/``POST http://127.0.0.1:<port><path>`` with a minimal HTTP/1.1 client;
  any 2xx passes when ``status`` is unset, else exactly ``status``.
* ``tcp``: a TCP connection to ``127.0.0.1:<port>`` within the timeout.
* ``cmd``: ``sh -c command`` (a command that starts with ``#!`` runs as a script of its
  interpreter); exit status 0 passes. The process runs in a new session; when it times out, or
  when the monitor is cancelled, its whole process group is SIGKILLed (after a normal exit too, so
  nothing it started in the background lingers), with what left the group (``setsid``) but
  carries the run's ``HIVE_STEP_ID``. The process plumbing is
  :func:`hive.daemon._shell_step.run_step`, shared with hooks and builds. With an ``exec_check``
  (a container's), ``sh -c command`` runs inside the instance instead, through its engine's API:
  no process here (see :mod:`runners._engine_exec`); the message is the same.
* ``postgres``, ``mysql`` (MariaDB too), ``redis``, ``grpc``: the server's own protocol on
  ``<host>:<port>``, bounded by the timeout (see :mod:`hive.daemon.health_probes`).
* any other type never gets here: ``hive.yaml`` validation refuses it. Should one arrive
  anyway, the check fails with ``health check type 'X' is not available``.

Problems never escape :meth:`HealthMonitor.run`: a port template that cannot be rendered, a
non-numeric port or a missing type block make that check fail with the reason as its message.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import anyio
import anyio.abc

from hive.config import HealthCheckSpec, RuntimeTemplateError, render_runtime
from hive.daemon._shell_step import cut_line, run_shell_step
from hive.daemon.health_probes import (
    ProbeFailed,
    connect_error,
    grpc_probe,
    mysql_probe,
    postgres_probe,
    redis_probe,
)
from hive_client import HealthCheckResult
from runners.base import CheckExec, RunnerError, describe_exit

__all__ = ["HOST", "HealthMonitor", "format_seconds"]

log = logging.getLogger("hive.health")

HOST = "127.0.0.1"

# Defaults for non-positive timings, as in the config format (spec S).
_DEFAULT_INTERVAL = 10.0
_DEFAULT_TIMEOUT = 5.0

# What an HTTP check reads at most (status line, plus the headers of any 1xx answers).
_HTTP_READ_CAP = 16 * 1024

_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: [^\r\n]*)?")
_PATH_SAFE = "/:@!$&'()*+,;=?%~-._"

# The checks that speak a server's protocol: type → probe(port, the type's block).
_SERVER_PROBES: dict[str, Callable[[int, Any], Awaitable[tuple[bool, str]]]] = {
    "postgres": postgres_probe, "mysql": mysql_probe, "redis": redis_probe, "grpc": grpc_probe,
}

OnChange = Callable[[bool, str], None]
OnResult = Callable[[HealthCheckResult], None]


def format_seconds(seconds: float) -> str:
    """``5.0`` → ``5s``, ``0.25`` → ``250ms``, ``1.5`` → ``1.5s``."""
    if seconds >= 1 or seconds <= 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


# Before a check first passes, it is tried again after this long, doubling (see
# HealthMonitor._until_first_pass).
_FIRST_PASS_RETRY = 0.1


class _CheckFailed(Exception):
    """A probe failed; the message says why."""


@dataclass
class _Check:
    """One configured check and what the monitor knows about it."""

    spec: HealthCheckSpec
    kind: str
    target: str
    interval: float
    timeout: float
    retries: int
    start_period: float
    port: int | None = None  # rendered (http/tcp)
    problem: str | None = None  # a configuration problem: every probe fails with it
    consecutive_failures: int = 0
    started: bool = False  # a pass was seen (ends the start period)
    last: HealthCheckResult | None = None
    passing: bool | None = None  # the last probe's outcome


class HealthMonitor:
    """Runs the health checks of one service instance; see the module documentation.

    ``ports`` are the instance's rollout ports (for ``{{runtime.port.NAME}}``); ``env`` is the
    complete environment of a cmd check's process (not used with an ``exec_check``: the command
    gets the container's). ``on_change(healthy, message)`` is called when the
    overall verdict changes, the first verdict included; ``on_result(result)`` (optional) after
    every probe. Both are called synchronously from the monitor's tasks, must not block, and an
    exception they raise is logged and swallowed.

    ``exec_check`` runs cmd checks elsewhere (a container: :meth:`ServiceHandle.check_exec`); the
    check's ``working_dir`` is then not applied (the container's is). Without it: ``sh -c`` in
    ``working_dir``, on the host.

    A monitor runs once: create a new one for each instance start.
    """

    def __init__(
        self,
        fqn: str,
        checks: Sequence[HealthCheckSpec],
        *,
        ports: Mapping[str, int],
        env: Mapping[str, str],
        on_change: OnChange,
        exec_check: CheckExec | None = None,
        on_result: OnResult | None = None,
    ) -> None:
        self.fqn = fqn
        self._env = dict(env)
        self._on_change = on_change
        self._on_result = on_result
        self._exec_check = exec_check
        self._checks = [self._prepare(spec, ports) for spec in checks]
        self.results_version = 0  # counts new results: what showed the old ones is stale
        self._healthy: bool | None = None
        self._ran = False

    # ---- public surface ----------------------------------------------------------------------

    @property
    def healthy(self) -> bool | None:
        """The overall verdict; None until the first one (and always None without checks)."""
        return self._healthy

    def results(self) -> list[HealthCheckResult]:
        """The last result of each check, in config order. A check not run yet has
        ``healthy=None`` and ``checked_at=None``."""
        return [
            check.last
            if check.last is not None
            else HealthCheckResult(kind=check.kind, target=check.target, message="not checked yet")
            for check in self._checks
        ]

    async def run(self) -> None:
        """Run every check on its schedule until cancelled. Without checks, just wait to be
        cancelled (the verdict stays unknown)."""
        if self._ran:
            raise RuntimeError("a HealthMonitor runs once; create a new one for each start")
        self._ran = True
        if not self._checks:
            await anyio.sleep_forever()
        t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for check in self._checks:
                tg.start_soon(self._loop, check, t0, name=f"health {self.fqn} {check.target}")

    # ---- scheduling and verdicts -------------------------------------------------------------

    async def _loop(self, check: _Check, t0: float) -> None:
        tick = 0
        while True:
            scheduled = t0 + tick * check.interval
            if tick > 0 and not check.started:
                await self._until_first_pass(check, scheduled)
            await anyio.sleep_until(scheduled)
            begun = anyio.current_time()
            in_start_period = not check.started and begun - t0 < check.start_period
            passed, message = await self._probe(check)
            self._record(check, passed, message, counted=passed or not in_start_period)
            # The next tick after now: a probe that overran skips the ticks it missed.
            elapsed = anyio.current_time() - t0
            tick = max(tick + 1, math.floor(elapsed / check.interval) + 1)

    async def _until_first_pass(self, check: _Check, scheduled: float) -> None:
        """Before a check has ever passed, probe again soon (0.1 s, doubling) until its next
        scheduled probe: a service is seen ready moments after it is, not an interval later
        (a web + worker stack waited 10 s). These extra probes count only when they pass, so
        ``retries`` keeps its meaning in time."""
        delay = _FIRST_PASS_RETRY
        while not check.started and anyio.current_time() + delay < scheduled:
            await anyio.sleep(delay)
            delay *= 2
            passed, message = await self._probe(check)
            if passed:
                self._record(check, passed, message, counted=True)

    def _record(self, check: _Check, passed: bool, message: str, *, counted: bool) -> None:
        if passed:
            check.consecutive_failures = 0
            check.started = True
        elif counted:
            check.consecutive_failures += 1
        check.passing = passed
        check.last = HealthCheckResult(
            kind=check.kind,
            target=check.target,
            healthy=passed,
            message=message,
            checked_at=datetime.now(UTC),
            consecutive_failures=check.consecutive_failures,
        )
        self.results_version += 1
        if self._on_result is not None:
            self._call(self._on_result, check.last)
        self._update_verdict()

    def _update_verdict(self) -> None:
        failing = [c for c in self._checks if c.consecutive_failures >= c.retries]
        if failing:
            verdict = False
            message = "; ".join(
                f"{c.target}: {c.last.message if c.last else ''} "
                f"({c.consecutive_failures} consecutive failure"
                f"{'s' if c.consecutive_failures != 1 else ''})"
                for c in failing
            )
        elif all(c.passing for c in self._checks):
            verdict = True
            message = "; ".join(
                f"{c.target}: {c.last.message if c.last else ''}" for c in self._checks
            )
        else:
            return
        if verdict == self._healthy:
            return
        self._healthy = verdict
        log.info(
            "%s is %s: %s", self.fqn, "healthy" if verdict else "unhealthy", message,
            extra={"service_fqn": self.fqn},
        )
        self._call(self._on_change, verdict, message)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("health callback of %s failed", self.fqn)

    # ---- preparing checks --------------------------------------------------------------------

    def _prepare(self, spec: HealthCheckSpec, ports: Mapping[str, int]) -> _Check:
        check = _Check(
            spec=spec,
            kind=spec.type,
            target=spec.type,
            interval=spec.interval if spec.interval > 0 else _DEFAULT_INTERVAL,
            timeout=spec.timeout if spec.timeout > 0 else _DEFAULT_TIMEOUT,
            retries=max(1, spec.retries),
            start_period=max(0.0, spec.start_period),
        )
        if spec.type == "http":
            if spec.http is None:
                check.problem = "missing 'http' configuration"
                return check
            path = _request_path(spec.http.path)
            port_text = _port_text(spec.http.port)
            check.target = f"{spec.http.method} {HOST}:{port_text}{path}"
            check.port, check.problem = _render_port(port_text, ports)
            if check.port is not None:
                check.target = f"{spec.http.method} {HOST}:{check.port}{path}"
        elif spec.type == "tcp":
            if spec.tcp is None:
                check.problem = "missing 'tcp' configuration"
                return check
            port_text = _port_text(spec.tcp.port)
            check.port, check.problem = _render_port(port_text, ports)
            check.target = f"tcp {HOST}:{check.port if check.port is not None else port_text}"
        elif spec.type == "cmd":
            if spec.cmd is None:
                check.problem = "missing 'cmd' configuration"
                return check
            check.target = f"cmd: {spec.cmd.command}"
        elif spec.type in _SERVER_PROBES:
            server = spec.server()
            if server is None:
                check.problem = f"missing '{spec.type}' configuration"
                return check
            port_text = _port_text(server.port)
            check.port, check.problem = _render_port(port_text, ports)
            shown = check.port if check.port is not None else port_text
            check.target = f"{spec.type} {server.host}:{shown}"
        else:
            check.problem = f"health check type '{spec.type}' is not available"
        return check

    # ---- probes ------------------------------------------------------------------------------

    async def _probe(self, check: _Check) -> tuple[bool, str]:
        """One probe: (passed, message). Never raises, except cancellation."""
        if check.problem is not None:
            return False, check.problem
        spec = check.spec
        try:
            if spec.http is not None and spec.type == "http":
                assert check.port is not None
                with anyio.fail_after(check.timeout):
                    return await _http_probe(
                        check.port, spec.http.method, spec.http.path, spec.http.status
                    )
            if spec.type == "tcp":
                assert check.port is not None
                with anyio.fail_after(check.timeout):
                    return await _tcp_probe(check.port)
            if spec.cmd is not None and spec.type == "cmd":
                return await self._cmd_probe(spec.cmd.command, spec.cmd.working_dir, check.timeout)
            server = spec.server()
            if server is not None and spec.type in _SERVER_PROBES:
                assert check.port is not None
                with anyio.fail_after(check.timeout):
                    return await _SERVER_PROBES[spec.type](check.port, server)
            return False, f"health check type '{spec.type}' is not available"
        except TimeoutError:
            return False, f"timed out after {format_seconds(check.timeout)}"
        except (_CheckFailed, ProbeFailed) as exc:
            return False, str(exc)
        except Exception as exc:  # a bug or an unexpected OS error: a failed check, not a crash
            log.exception("health check %s of %s failed unexpectedly", check.target, self.fqn)
            return False, f"check error: {exc!r}"

    async def _cmd_probe(self, command: str, working_dir: str, timeout: float) -> tuple[bool, str]:
        if self._exec_check is not None:  # inside a container: its working dir, not ours
            return await self._exec_probe(self._exec_check, command, timeout)
        # No grace on a kill: a check is a probe, not a service with state to save. One pipe
        # for both streams: the message quotes the last line printed, whichever stream it was.
        # (A command that starts with #! runs as a script of its interpreter.)
        result = await run_shell_step(
            command, cwd=working_dir, env=self._env, shell="sh", timeout=timeout, kill_grace=0,
            tail_lines=1, merge_stderr=True,
        )
        if result.error is not None:
            raise _CheckFailed(result.error)
        last = cut_line(result.tail[-1].strip()) if result.tail else ""
        if result.timed_out:
            return False, _timed_out(timeout, last)
        status = describe_exit(result.exit_code, result.signal, code_phrase="exit status")
        return result.ok, f"{status}: {last}" if last else status

    @staticmethod
    async def _exec_probe(exec_check: CheckExec, command: str, timeout: float) -> tuple[bool, str]:
        try:
            run = await exec_check(command, timeout)
        except RunnerError as exc:  # the engine is away, the container not running
            raise _CheckFailed(f"cannot run the check in the container: {exc}") from None
        last = cut_line(run.output.strip())
        if run.exit_code is None:
            return False, _timed_out(timeout, last)
        status = describe_exit(run.exit_code, code_phrase="exit status")
        return run.exit_code == 0, f"{status}: {last}" if last else status


# ---- helpers -------------------------------------------------------------------------------


def _timed_out(timeout: float, last: str) -> str:
    suffix = f" (last output: {last})" if last else ""
    return f"timed out after {format_seconds(timeout)}{suffix}"


def _port_text(port: object) -> str:
    return port if isinstance(port, str) else str(port)


def _render_port(text: str, ports: Mapping[str, int]) -> tuple[int | None, str | None]:
    """(port, None) or (None, problem)."""
    try:
        rendered = render_runtime(text, ports=ports, uses=None).strip()
    except RuntimeTemplateError as exc:
        return None, str(exc)
    if not (rendered.isascii() and rendered.isdigit()):
        return None, f"invalid port {rendered!r}: expected a number"
    port = int(rendered)
    if not 1 <= port <= 65535:
        return None, f"invalid port {port}: out of range 1-65535"
    return port, None


def _request_path(path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    return quote(path, safe=_PATH_SAFE)


async def _connect(port: int) -> anyio.abc.SocketStream:
    try:
        return await anyio.connect_tcp(HOST, port)
    except OSError as exc:
        raise _CheckFailed(connect_error(exc, HOST, port)) from None


async def _tcp_probe(port: int) -> tuple[bool, str]:
    stream = await _connect(port)
    await stream.aclose()
    return True, f"connected to {HOST}:{port}"


async def _http_probe(port: int, method: str, path: str, expected: int | None) -> tuple[bool, str]:
    request_path = _request_path(path)
    lines = [
        f"{method} {request_path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "User-Agent: hive-health",
        "Accept: */*",
        "Connection: close",
    ]
    if method == "POST":
        lines.append("Content-Length: 0")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    stream = await _connect(port)
    async with stream:
        try:
            await stream.send(request)
            status = await _read_status(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _CheckFailed(f"connection to {HOST}:{port} failed: {exc or 'reset'}") from None
    got = f"HTTP {status} from {request_path}"
    if expected is None:
        return 200 <= status < 300, got
    if status == expected:
        return True, got
    return False, f"{got} (expected {expected})"


async def _read_status(stream: anyio.abc.SocketStream) -> int:
    """The status of the final response (interim 1xx answers are skipped). Reads at most
    ``_HTTP_READ_CAP`` bytes in all."""
    buffer = b""
    received = 0

    async def fill_until(marker: bytes) -> None:
        nonlocal buffer, received
        while marker not in buffer:
            if received >= _HTTP_READ_CAP:
                raise _CheckFailed("invalid HTTP response: header too long")
            try:
                chunk = await stream.receive(_HTTP_READ_CAP - received)
            except anyio.EndOfStream:
                if not received:
                    raise _CheckFailed("connection closed without an HTTP response") from None
                raise _CheckFailed(f"invalid HTTP response: {buffer[:60]!r}") from None
            received += len(chunk)
            buffer += chunk

    while True:
        await fill_until(b"\r\n")
        line = buffer.split(b"\r\n", 1)[0]
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise _CheckFailed(f"invalid HTTP response: {line[:60]!r}")
        status = int(match.group(1))
        if not 100 <= status < 200 or status == 101:
            return status
        # An interim answer (100 Continue, 103 Early Hints): skip it and its headers.
        await fill_until(b"\r\n\r\n")
        buffer = buffer.split(b"\r\n\r\n", 1)[1]
