"""``hive up``: start the daemon if needed, add the project, start it, show it come up."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hive_client import DaemonNotRunning

from ._bringup import BringUp, bring_up
from ._common import EXIT_FAILURE, CliState, fail, json_option, pass_state
from ._output import Output
from ._reasons import Verdict
from ._watch_plan import DEFAULT_DEBOUNCE_MS, WatchPlan
from .daemon_cmds import START_TIMEOUT, daemon_home, spawn_daemon
from .service_cmds import complete_fqn, find_project_root

if TYPE_CHECKING:
    from rich.console import RenderableType

UP_TIMEOUT = 120.0  # seconds `hive up` waits for the services, unless told otherwise

_MARKS = {"up": ("✔", "green"), "failed": ("✘", "red"), "pending": ("…", "cyan")}


def _status_text(progress: BringUp, fqn: str) -> tuple[Verdict, str]:
    """(verdict, words) for one service."""
    info = progress.services[fqn]
    judged = progress.verdict_of(info)
    if judged == "up":
        words = "healthy" if info.healthy else ("done" if info.state == "exited" else "running")
    elif judged == "failed":
        words = f"failed: {progress.reason_of(info)}"
    elif info.state == "stopped":
        words = "starting"  # the start is on its way
    elif info.state == "starting":
        why = progress.reason_of(info)
        words = why if why.startswith("waiting for ") else "starting"
    else:
        why = progress.reason_of(info)
        words = why if why.startswith(info.state) else f"{info.state}: {why}"
    return judged, words


class _LiveView:
    """One line per service, redrawn in place (a terminal)."""

    def __init__(self, out: Output) -> None:
        from rich.live import Live

        self._live = Live(console=out.console, refresh_per_second=8, transient=False)

    def __enter__(self) -> _LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def __call__(self, progress: BringUp) -> None:
        self._live.update(self._render(progress))

    @staticmethod
    def _render(progress: BringUp) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        for info in progress.targets():
            judged, words = _status_text(progress, info.fqn)
            mark, style = _MARKS[judged]
            table.add_row(Text(mark, style=style), Text(info.fqn, style="bold"), Text(words, style=style))
        return table


class _LineView:
    """A line each time a service's status changes (piped output, CI logs)."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def __enter__(self) -> _LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()

    def __call__(self, progress: BringUp) -> None:
        for info in progress.targets():
            _, words = _status_text(progress, info.fqn)
            if self._shown.get(info.fqn) != words:
                self._shown[info.fqn] = words
                sys.stdout.write(f"{info.fqn}: {words}\n")
        sys.stdout.flush()


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, progress: BringUp) -> None:
        return None


def _ensure_daemon(state: CliState) -> int | None:
    """The pid of a daemon started here, or None when one was already running."""
    try:
        state.client().status()
        return None
    except DaemonNotRunning:
        state.close()
    pid, _socket = spawn_daemon(daemon_home(state), START_TIMEOUT)
    return pid


def _wait_limit(ctx: click.Context, state: CliState, given: float | None) -> float:
    if given is not None:
        return given
    root = ctx.find_root()
    if root.get_parameter_source("timeout") not in (None, click.core.ParameterSource.DEFAULT):
        return state.timeout or UP_TIMEOUT
    return UP_TIMEOUT


@click.command()
@click.argument("args", nargs=-1, metavar="[PATH] [SERVICE]...", shell_complete=complete_fqn)
@click.option("--name", help="Source name (default: the directory name).")
@click.option("--timeout", "wait", type=float, metavar="SECONDS",
              help=f"How long to wait for the services to come up (default {UP_TIMEOUT:.0f}, or hive --timeout).")
@click.option("--watch", is_flag=True,
              help="Then restart (or rebuild and restart) the services when their files change, until Ctrl-C: "
                   "each service's `watch:` in hive.yaml, else the project root (or --watch-path).")
@click.option("--watch-path", "watch_paths", multiple=True, type=click.Path(exists=True, file_okay=True),
              metavar="PATH", help="What --watch watches for the services without a `watch:` "
                                   "(repeatable; default: the project root).")
@click.option("--ignore", "ignores", multiple=True, metavar="GLOB",
              help="Changes --watch ignores (repeatable): `tmp/*` from the root, `*.log` anywhere.")
@click.option("--debounce", type=click.IntRange(10, 60_000), default=DEFAULT_DEBOUNCE_MS, show_default=True,
              metavar="MS", help="--watch restarts once no change came for this long "
                                 "(a `watch: debounce` overrides it for its service).")
@json_option
@pass_state
@click.pass_context
def up(ctx: click.Context, state: CliState, args: tuple[str, ...], name: str | None, wait: float | None,
       watch: bool, watch_paths: tuple[str, ...], ignores: tuple[str, ...], debounce: int) -> None:
    """Add a project as a source and start it (or only the SERVICEs named), starting the
    daemon first if none runs. Shows each service come up; exits 1 naming those that did not.
    With --watch it stays, restarting the services each time their files change."""
    path: Path | None = None
    names = list(args)
    if names and (Path(names[0]).exists() or "/" in names[0]):
        path = Path(names.pop(0))
    if path is None:
        path = find_project_root(Path.cwd())
        if path is None:
            fail("no hive.yaml here or in any parent directory", hint="pass the project's PATH")
    limit = _wait_limit(ctx, state, wait)
    out = state.out
    started = _ensure_daemon(state)
    if started is not None and not state.json_mode:
        out.line(f"Hive started (pid {started})", style="dim")
    added = state.client().add_source(path.absolute(), name=name)
    state.close()  # the async client below takes over
    for warning in added.warnings:  # on stderr: stdout (--json too) stays data
        sys.stderr.write(warning + "\n")
    if path.is_dir():  # a project directory (a SQLite source has no such parts)
        from ._inactive import warn_inactive

        warn_inactive(path.absolute(), added.name, names)

    import anyio

    progress = BringUp(source=added.name, names=names)
    view: _LiveView | _LineView | _Quiet
    view = _Quiet() if state.json_mode else (_LiveView(out) if out.tty else _LineView())
    with view:
        anyio.run(bring_up, state.socket, progress, limit, view)
    not_up = progress.not_up()
    if state.json_mode:
        out.json({
            "source": added.name,
            "daemon_started": started is not None,
            "services": progress.targets(),
            "failed": [s.fqn for s in not_up],
            "reasons": {s.fqn: progress.reason_of(s) for s in not_up},
            "logs": {fqn: [line.message for line in lines] for fqn, lines in progress.logs.items()},
            "timed_out": progress.timed_out,
        })
    else:
        _report(out, progress, limit)
    if watch:
        from ._watch_plan import plans_for

        plans = plans_for(path.absolute(), added.name, progress.targets(),
                          tuple(Path(p).absolute() for p in watch_paths), ignores, debounce)
        _watch(state, plans)
    if not_up:
        sys.exit(EXIT_FAILURE)


def _watch(state: CliState, plans: list[WatchPlan]) -> None:
    """Restart on changes until Ctrl-C (which ends the command with 130, quietly)."""
    import anyio

    from ._watch import watch_and_restart

    out = state.out
    if not any(plan.services for plan in plans):
        fail("nothing to watch for: the project has no services")
    paths = list(dict.fromkeys(p for plan in plans for p in plan.paths))
    services = list(dict.fromkeys(fqn for plan in plans for fqn in plan.services))

    def ready() -> None:
        if state.json_mode:
            out.json({"watching": [str(p) for p in paths], "services": services})
        else:
            root = plans[0].root
            where = ", ".join(plans[0].relative(str(p)) if p != root else str(p) for p in paths)
            out.line(f"watching {where} for changes (Ctrl-C to stop)", style="dim")
        sys.stdout.flush()

    def report(line: str, ok: bool) -> None:
        if state.json_mode:
            out.json({"watch": line, "ok": ok})
        else:
            out.line(line, style="green" if ok else "red")
        sys.stdout.flush()

    async def until_interrupted() -> None:
        # Ctrl-C is taken as a signal here, so it ends the watch between two steps (a
        # KeyboardInterrupt could land inside a restart request or watchfiles' thread).
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    await watch_and_restart(state.socket, plans, report, ready)

                group.start_soon(watch)
                async for _ in signals:
                    group.cancel_scope.cancel()
                    break

    anyio.run(until_interrupted)
    sys.exit(130)  # what shells expect of an interrupted command, quietly


def _report(out: Output, progress: BringUp, limit: float) -> None:
    not_up = progress.not_up()
    if not not_up:
        count = len(progress.targets())
        out.line(f"{progress.source}: {count} service{'s' if count != 1 else ''} up", style="green")
        return
    for info in not_up:
        out.line(f"{info.fqn}: {progress.reason_of(info)}", style="red")
        for line in progress.logs.get(info.fqn, []):
            out.line(f"    {line.message}", style="dim")
    names = ", ".join(s.fqn for s in not_up)
    waited = f" within {limit:g} s" if progress.timed_out else ""
    out.error(f"{len(not_up)} service{'s' if len(not_up) != 1 else ''} did not come up{waited}: {names}",
              "`hive logs NAME` shows more; `hive up --timeout SECONDS` waits longer")
