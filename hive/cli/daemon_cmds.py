"""``hive start | stop | status | ping | reload | events``: the daemon itself
(``hive start|stop SERVICE...`` hand over to the service commands)."""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path

import click

from hive_client import BlockingClient, DaemonNotRunning, event_kinds, hive_home

from ._common import EXIT_FAILURE, EXIT_NOT_RUNNING, CliState, fail, json_option, pass_state
from ._lean import dns_row, log_files_row, proxy_row
from ._output import format_duration

START_TIMEOUT = 30.0


def daemon_home(state: CliState) -> Path:
    return hive_home(state.home).absolute()


def _services_instead(state: CliState, names: tuple[str, ...], verb: str, daemon_flag: str | None) -> bool:
    """`hive start|stop NAME...` act on services (this project's, as compose does); with
    no NAME, on the daemon. True when the services were acted on."""
    if not names:
        return False
    if daemon_flag is not None:
        raise click.UsageError(f"{daemon_flag} is for the daemon: give it without a SERVICE")
    from .service_cmds import act_in_project  # the daemon commands stay light

    act_in_project(state, names, verb)
    return True


@click.command()
@click.argument("names", nargs=-1, metavar="[SERVICE]...")
@click.option("--foreground", is_flag=True, help="Run in this process, logging to stderr (systemd, containers).")
@click.option("--timeout", type=float, default=START_TIMEOUT, show_default=True, help="Seconds to wait for the daemon to answer.")
@json_option
@pass_state
def start(state: CliState, names: tuple[str, ...], foreground: bool, timeout: float) -> None:
    """Start the daemon (detached unless --foreground); with SERVICEs, start those instead
    (a bare NAME is this project's, SOURCE:NAME or a pattern as `hive service start`)."""
    if _services_instead(state, names, "start", "--foreground" if foreground else None):
        return
    home = daemon_home(state)
    if foreground:
        from hive.daemon.lifecycle import run_daemon

        sys.exit(run_daemon(str(home), foreground=True))

    running = _running_daemon(state)
    if running is not None:
        pid, socket_path = running
        if state.json_mode:
            state.out.json({"started": False, "running": True, "pid": pid, "socket": socket_path})
        else:
            state.out.error(
                f"Hive is already running (pid {pid}, socket {socket_path})",
                "stop it first with `hive stop`",
            )
        sys.exit(EXIT_FAILURE)

    pid, socket_path = spawn_daemon(home, timeout)
    if state.json_mode:
        state.out.json({"started": True, "running": True, "pid": pid, "socket": socket_path})
    else:
        state.out.markup(
            f"[green]Hive started[/] (pid {pid}, socket {socket_path})",
            f"Hive started (pid {pid}, socket {socket_path})",
        )


def _running_daemon(state: CliState) -> tuple[int, str] | None:
    """(pid, socket) of a daemon that answers, else None."""
    try:
        with BlockingClient(state.socket, timeout=5) as client:
            status = client.status()
    except DaemonNotRunning:
        return None
    return status.pid or 0, status.socket


def spawn_daemon(home: Path, timeout: float) -> tuple[int, str]:
    """Start ``python -m hive.daemon`` in its own session; wait for its ready line."""
    import subprocess  # only `hive start` pays for it
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home / "logs").mkdir(mode=0o700, exist_ok=True)
    console_log = home / "logs" / "daemon.out"
    read_end, write_end = os.pipe()
    with open(console_log, "ab") as console, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            [sys.executable, "-m", "hive.daemon", "--home", str(home), "--ready-fd", str(write_end)],
            stdin=devnull,
            stdout=console,
            stderr=console,
            pass_fds=(write_end,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(write_end)
    try:
        answer = _read_ready_line(read_end, timeout)
    finally:
        os.close(read_end)
    if answer.startswith("ready "):
        return process.pid, answer.removeprefix("ready ")
    if answer.startswith("error: "):
        fail(answer.removeprefix("error: "))
    if not answer:
        code = process.poll()
        if code is None:
            detail = f" within {timeout:.0f} s"
        else:
            from runners.base import describe_exit  # a failure path: the CLI's start stays light

            detail = f" ({describe_exit(code, code_phrase='exit code')})"
        fail(
            f"the daemon did not start{detail}",
            hint=f"its log is {home / 'logs' / 'daemon.log'} (console output: {console_log})",
        )
    fail(f"unexpected answer from the daemon: {answer!r}")


def _read_ready_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


@click.command()
@click.argument("names", nargs=-1, metavar="[SERVICE]...")
@click.option("--keep-services", is_flag=True, help="Leave the services running for the next daemon.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the daemon to exit.")
@json_option
@pass_state
def stop(state: CliState, names: tuple[str, ...], keep_services: bool, timeout: float) -> None:
    """Stop the daemon gracefully (and its services, unless --keep-services); with
    SERVICEs, stop only those and leave the daemon running (a bare NAME is this project's)."""
    if _services_instead(state, names, "stop", "--keep-services" if keep_services else None):
        return
    try:
        client = state.client()
        client.status()
    except DaemonNotRunning:
        if state.json_mode:
            state.out.json({"stopped": False, "running": False})
            return
        fail("Hive is not running", code=EXIT_NOT_RUNNING)
    assert client.welcome is not None
    pid = client.welcome.pid
    pidfd = _pidfd(pid)
    client.shutdown(keep_services=keep_services)
    state.close()
    if not _wait_exit(pid, pidfd, timeout):
        fail(
            f"the daemon (pid {pid}) is still running after {timeout:.0f} s",
            hint=f"it may be stopping slow services; `kill -TERM {pid}` repeats the request",
        )
    if state.json_mode:
        state.out.json({"stopped": True, "pid": pid})
    else:
        state.out.line(f"Hive stopped (pid {pid})")


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _wait_exit(pid: int, pidfd: int | None, timeout: float) -> bool:
    """Wait for ``pid`` to exit, on its pidfd (no polling)."""
    if pidfd is None:
        return True  # already gone
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


@click.command()
@json_option
@pass_state
def status(state: CliState) -> None:
    """Show whether the daemon runs, and its pid, version, uptime and socket."""
    try:
        info = state.client().status()
    except DaemonNotRunning:
        if state.json_mode:
            state.out.json({"running": False, "socket": state.socket_path})
        else:
            state.out.line(f"Hive is not running (no daemon on {state.socket_path})")
        sys.exit(EXIT_NOT_RUNNING)
    if state.json_mode:
        state.out.json(info)
        return
    dns = dns_row(info.dns_address, info.dns_upstream, info.dns_error)
    proxy = proxy_row(info.proxy_addresses, info.proxy_errors)
    state.out.fields(
        f"Hive {info.version} is running",
        [
            ("pid", str(info.pid)),
            ("uptime", format_duration(info.uptime_secs)),
            ("socket", info.socket),
            ("home", info.home),
            ("sources", str(info.source_count)),
            ("services", f"{info.running_services} running of {info.total_services}"),
            ("clients", str(info.clients)),
            ("state", "saved" if info.state_error is None else
             f"NOT SAVED ({info.state_unsaved} changes waiting, retrying): {info.state_error}"),
            *([("state file", info.state_note)] if info.state_note else []),
            *([("log files", log_files_row(info.log_write_errors, info.log_lines_dropped,
                                           info.log_write_error))]
              if info.log_write_errors else []),
            *([("proxy", proxy)] if proxy else []),
            *([("dns", dns)] if dns else []),
        ],
        title_style="bold green" if info.state_error is None else "bold red",
    )


@click.command()
@click.option("-c", "--count", type=int, default=1, show_default=True, help="Round trips to make.")
@json_option
@pass_state
def ping(state: CliState, count: int) -> None:
    """Check that the daemon answers, and how fast."""
    client = state.client()
    client.ping()  # the first one also carries the hello
    times = []
    for _ in range(max(count, 1)):
        began = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - began) * 1000)
    assert client.welcome is not None
    best = min(times)
    if state.json_mode:
        state.out.json({"pong": True, "pid": client.welcome.pid, "ms": times})
    else:
        state.out.line(f"pong from pid {client.welcome.pid} in {best:.2f} ms")


@click.command()
@json_option
@pass_state
def reload(state: CliState) -> None:
    """Re-read the daemon's configuration and every source (same as SIGHUP)."""
    message = state.client().reload()
    if state.json_mode:
        state.out.json({"reloaded": True, "message": message})
    else:
        state.out.line(message or "reloaded")


def _for_people(value: object) -> str:
    """An event's field as people read it: seconds rounded (``delay=1.0s``, not
    ``delay=1.0020182525945034``); other values as they are."""
    if isinstance(value, float):
        return f"{value:.1f}s" if value < 60 else format_duration(value)
    return str(value)


def _complete_kinds(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [kind for kind in event_kinds() if kind.startswith(incomplete)]


@click.command()
@click.option("-k", "--kind", "kinds", multiple=True, shell_complete=_complete_kinds, help="Only this kind of event (repeatable).")
@click.option("-s", "--service", "fqn", metavar="PATTERN", help="Only events of matching services (web, proj:*).")
@click.option("--since", "since_seq", type=int, metavar="SEQ", help="Replay retained events after this sequence number first.")
@json_option
@pass_state
def events(state: CliState, kinds: tuple[str, ...], fqn: str | None, since_seq: int | None) -> None:
    """Follow the daemon's events live (Ctrl-C to stop)."""
    unknown = sorted(set(kinds) - set(event_kinds()))
    if unknown:
        fail(f"unknown event kind(s): {', '.join(unknown)}", hint="known: " + ", ".join(event_kinds()))
    out = state.out
    client = state.client()
    client.timeout = None
    with client.subscribe_events(kinds, fqn=fqn, since_seq=since_seq) as stream:
        for event in stream:
            if state.json_mode:
                out.json(event)
                continue
            tag = event.__struct_config__.tag
            details = " ".join(
                f"{name}={_for_people(getattr(event, name))}"
                for name in event.__struct_fields__
                if name not in ("seq", "timestamp", "fqn") and getattr(event, name) not in (None, "")
            )
            when = event.timestamp.astimezone().strftime("%H:%M:%S.%f")[:-3] if event.timestamp else ""
            subject = getattr(event, "fqn", "")
            out.markup(
                f"[dim]{when} #{event.seq}[/] [bold]{tag}[/] {subject} [dim]{details}[/]",
                f"{when} #{event.seq} {tag} {subject} {details}".rstrip(),
            )
            sys.stdout.flush()
    if stream.end_reason and not state.json_mode:
        out.line(f"(stream ended: {stream.end_reason})", style="dim")

