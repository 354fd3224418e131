"""``hive up | down | services | service … | logs``: services and their output."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import msgspec

from hive_client import BlockingClient, DaemonError, InstanceOutcome, LogLine, ServiceInfo

from ._common import EXIT_FAILURE, CliState, fail, json_option, pass_state
from ._output import Output
from ._service_text import NO_SERVICES, SERVICE_COLUMNS, reason_lines, service_fields, service_rows

# Config file names, as hive.config knows them (kept here so the CLI stays light).
CONFIG_FILES = ("hive.yaml", ".hive/hive.yaml", ".adi/hive.yaml")


def find_project_root(start: Path) -> Path | None:
    current = start.absolute()
    for directory in (current, *current.parents):
        if any((directory / name).is_file() for name in CONFIG_FILES):
            return directory
    return None


def complete_fqn(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion from the running daemon (nothing when it is not running)."""
    try:
        with BlockingClient(timeout=2) as client:
            services = client.list_services()
    except Exception:
        return []
    names = {s.fqn for s in services} | {s.name for s in services}
    return sorted(n for n in names if n.startswith(incomplete))


def resolve_fqn(client: BlockingClient, text: str) -> str:
    """``web`` → ``proj:web`` when unambiguous (the project in the CWD wins a tie)."""
    if ":" in text:
        return text
    services = client.list_services()
    matches = sorted({s.source for s in services if s.name == text.partition("#")[0]})
    if len(matches) == 1:
        return f"{matches[0]}:{text}"
    if not matches:
        fail(f"no service named {text!r}", hint="`hive services` lists them", code=4)
    root = find_project_root(Path.cwd())
    if root is not None:
        for source in client.list_sources():
            if Path(source.path) in (root, root / "hive.yaml") and source.name in matches:
                return f"{source.name}:{text}"
    fail(f"{text!r} is ambiguous: " + ", ".join(f"{m}:{text}" for m in matches),
         hint="name the source: SOURCE:SERVICE")


def in_project(client: BlockingClient, text: str) -> str:
    """What `hive restart|start|stop|logs NAME` act on: a bare NAME is this project's
    (the source `hive up` here would use), as compose does; ``SOURCE:NAME`` and patterns
    pass through. Outside any project, a bare NAME is any source's when unambiguous."""
    if ":" in text or any(char in text for char in "*?["):
        return text
    if find_project_root(Path.cwd()) is None:
        return resolve_fqn(client, text)
    source = source_for(client, None)
    names = sorted({s.name for s in client.list_services(source)})
    if text.partition("#")[0] not in names:
        fail(f"no service {text!r} in project {source} (it has: {', '.join(names) or 'none'})",
             hint=f"name another project's as SOURCE:{text}", code=4)
    return f"{source}:{text}"


def expand_fqns(client: BlockingClient, text: str) -> list[str]:
    """A pattern (``proj:*``, ``web*``) → every service it names; a name → its fqn."""
    if not any(char in text for char in "*?["):
        return [resolve_fqn(client, text)]
    from fnmatch import fnmatchcase

    fqns = {f"{s.source}:{s.name}" for s in client.list_services()}
    matched = sorted(f for f in fqns if fnmatchcase(f if ":" in text else f.partition(":")[2], text))
    if not matched:
        fail(f"no service matches {text!r}", hint="`hive services` lists them", code=4)
    return matched


def print_services(out: Output, services: list[ServiceInfo]) -> None:
    listed = msgspec.to_builtins(services)
    out.table(SERVICE_COLUMNS, service_rows(listed), state_column=1, empty=NO_SERVICES)
    for line, quiet in reason_lines(listed):
        out.line(line, style="dim" if quiet else "red")


@click.command()
@click.argument("target", required=False)
@json_option
@pass_state
def down(state: CliState, target: str | None) -> None:
    """Stop a project's services (TARGET: a path or a source name; default: this project)."""
    client = state.client()
    source = source_for(client, target)
    client.timeout = max(client.timeout or 0, 300)
    client.stop_source(source)
    if state.json_mode:
        state.out.json({"source": source, "stopped": True})
    else:
        state.out.line(f"stopped {source}")


def source_for(client: BlockingClient, target: str | None) -> str:
    """A source's name from its name, its path (``.``), or the project in the CWD."""
    sources = client.list_sources()
    if target and any(s.name == target for s in sources):
        return target
    root = Path(target).absolute() if target else find_project_root(Path.cwd())
    if root is not None:
        for source in sources:
            path = Path(source.path)
            if path == root or path.parent == root or path == root / "hive.db":
                return source.name
    fail(
        f"no source for {target or 'this directory'}",
        hint="`hive source list` shows the sources; `hive up` adds this project",
        code=4,
    )


@click.command()
@click.argument("source", required=False)
@click.option("--states", "states_only", is_flag=True,
              help="Only each instance's state, one per line: quick to ask and to parse.")
@json_option
@pass_state
def services(state: CliState, source: str | None, states_only: bool) -> None:
    """List services: state, health, pid, ports, restarts, uptime."""
    if states_only:
        states = state.client().list_states(source)
        if state.json_mode:
            state.out.json(states)
        else:
            for fqn, service_state in states.items():
                state.out.line(f"{fqn} {service_state}")
        return
    listed = state.client().list_services(source)
    if state.json_mode:
        state.out.json(listed)
    else:
        print_services(state.out, listed)


@click.group()
def service() -> None:
    """Act on one service: start, stop, restart, status, create, update, delete."""


def act(state: CliState, fqns: tuple[str, ...], verb: str) -> None:
    """Start, stop or restart each service; with --json, what became of each instance
    (``result``: done, failed or pending, with the reason), exit 1 unless all are done."""
    client = state.client()
    client.timeout = max(client.timeout or 0, 300)
    done: list[str] = []
    outcomes: list[InstanceOutcome] = []
    not_done: DaemonError | None = None
    for fqn in [fqn for text in fqns for fqn in expand_fqns(client, text)]:
        try:
            outcomes += getattr(client, f"{verb}_service")(fqn)
        except DaemonError as exc:
            if not exc.outcomes:
                raise
            outcomes += exc.outcomes
            not_done = not_done or exc
            continue
        done.append(fqn)
    if state.json_mode:
        state.out.json({_PAST[verb]: done, "outcomes": outcomes})
        if not_done is not None:
            sys.exit(EXIT_FAILURE)
        return
    for fqn in done:
        state.out.line(f"{fqn} {_PAST[verb]}")
    if not_done is not None:
        raise not_done


_PAST = {"start": "started", "stop": "stopped", "restart": "restarted"}


@service.command("start")
@click.argument("fqns", nargs=-1, required=True, metavar="SERVICE...", shell_complete=complete_fqn)
@json_option
@pass_state
def service_start(state: CliState, fqns: tuple[str, ...]) -> None:
    """Start services (and what they depend on)."""
    act(state, fqns, "start")


@service.command("stop")
@click.argument("fqns", nargs=-1, required=True, metavar="SERVICE...", shell_complete=complete_fqn)
@json_option
@pass_state
def service_stop(state: CliState, fqns: tuple[str, ...]) -> None:
    """Stop services (signal, grace period, kill); they stay stopped."""
    act(state, fqns, "stop")


@service.command("restart")
@click.argument("fqns", nargs=-1, required=True, metavar="SERVICE...", shell_complete=complete_fqn)
@json_option
@pass_state
def service_restart(state: CliState, fqns: tuple[str, ...]) -> None:
    """Stop, then start services."""
    act(state, fqns, "restart")


def act_in_project(state: CliState, names: tuple[str, ...], verb: str) -> None:
    """`hive start|stop|restart NAME...`: `hive service VERB`, bare names in this project."""
    client = state.client()
    act(state, tuple(in_project(client, name) for name in names), verb)


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="SERVICE...", shell_complete=complete_fqn)
@json_option
@pass_state
def restart(state: CliState, names: tuple[str, ...]) -> None:
    """Stop, then start services: NAME of this project, SOURCE:NAME, or a pattern (proj:*)."""
    act_in_project(state, names, "restart")


@service.command("status")
@click.argument("fqn", metavar="SERVICE", shell_complete=complete_fqn)
@json_option
@pass_state
def service_status(state: CliState, fqn: str) -> None:
    """Everything about one service, with its health checks."""
    client = state.client()
    info = client.get_service_status(resolve_fqn(client, fqn))
    if state.json_mode:
        state.out.json(info)
        return
    rows = service_fields(msgspec.to_builtins(info))
    state.out.fields(info.fqn, rows)


def _load_config_argument(config: str | None, file: Path | None) -> dict[str, Any]:
    if (config is None) == (file is None):
        fail("give the service's configuration with --config JSON or --file PATH (YAML or JSON)")
    try:
        if config is not None:
            data = json.loads(config)
        else:
            import yaml

            assert file is not None
            data = yaml.safe_load(file.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read the configuration: {exc}")
    except Exception as exc:  # yaml.YAMLError and friends
        fail(f"cannot parse the configuration: {exc}")
    if not isinstance(data, dict):
        fail("the configuration must be a mapping (a services.<name> entry of hive.yaml)")
    return data


@service.command("create")
@click.argument("source")
@click.argument("name")
@click.option("--config", help="The service as JSON (the shape of a hive.yaml services entry).")
@click.option("--file", "file", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Read it from a YAML or JSON file.")
@click.option("--no-start", is_flag=True, help="Create it stopped.")
@json_option
@pass_state
def service_create(state: CliState, source: str, name: str, config: str | None, file: Path | None, no_start: bool) -> None:
    """Create a service in a SQLite source."""
    entry = _load_config_argument(config, file)
    state.client().create_service(source, name, entry, start=not no_start)
    if state.json_mode:
        state.out.json({"created": f"{source}:{name}"})
    else:
        state.out.line(f"{source}:{name} created" + ("" if no_start else " and starting"))


@service.command("update")
@click.argument("fqn", metavar="SERVICE", shell_complete=complete_fqn)
@click.option("--patch", "patch", required=True, help="A JSON merge patch of its configuration.")
@json_option
@pass_state
def service_update(state: CliState, fqn: str, patch: str) -> None:
    """Change a SQLite-source service (restarted if it runs and changed)."""
    try:
        data = json.loads(patch)
    except ValueError as exc:
        fail(f"--patch is not JSON: {exc}")
    client = state.client()
    target = resolve_fqn(client, fqn)
    client.update_service(target, data)
    if state.json_mode:
        state.out.json({"updated": target})
    else:
        state.out.line(f"{target} updated")


@service.command("delete")
@click.argument("fqn", metavar="SERVICE", shell_complete=complete_fqn)
@json_option
@pass_state
def service_delete(state: CliState, fqn: str) -> None:
    """Stop and delete a SQLite-source service."""
    client = state.client()
    target = resolve_fqn(client, fqn)
    client.delete_service(target)
    if state.json_mode:
        state.out.json({"deleted": target})
    else:
        state.out.line(f"{target} deleted")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LEVEL_STYLES = {
    "trace": "dim", "debug": "dim", "info": "", "notice": "cyan",
    "warn": "yellow", "error": "red", "fatal": "bold red",
}


def parse_since(text: str, option: str = "--since") -> datetime:
    """``10m`` (ago), or an ISO timestamp."""
    match = _DURATION.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r}: expected a duration like 10m or 2h, or an ISO timestamp")
    return moment if moment.tzinfo else moment.astimezone()


# Per-service colours, as compose gives them: in order of first appearance, so the
# services on screen differ (up to the palette's size), and one keeps its colour.
_SERVICE_COLOURS = ("cyan", "yellow", "green", "magenta", "blue", "bright_cyan", "bright_yellow",
                    "bright_green", "bright_magenta", "bright_blue", "bright_red")
_colours: dict[str, str] = {}


def service_colour(fqn: str) -> str:
    service = fqn.partition("#")[0]
    colour = _colours.get(service)
    if colour is None:
        colour = _colours[service] = _SERVICE_COLOURS[len(_colours) % len(_SERVICE_COLOURS)]
    return colour


# C0 controls but tab, DEL and C1 controls, shown as ``\x1b``: on a terminal, a service's
# escape sequences could erase Hive's prefix and pass a line off as another's (journalctl does the same).
_NEUTRALISE = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0))}


def _print_line(out: Output, line: LogLine, width: int, raw: bool = False) -> None:
    message = line.message.translate(_NEUTRALISE) if out.tty and not raw else line.message
    when = line.timestamp.astimezone().strftime("%H:%M:%S.%f")[:-3]
    name = line.service_fqn.ljust(width)
    if out.tty:
        from rich.markup import escape

        style = _LEVEL_STYLES.get(line.level, "")
        marker = "[dim]hive[/] " if line.stream == "hive" else ""
        text = f"[{style}]{escape(message)}[/]" if style else escape(message)
        prefix = f"[dim]{when}[/] [{service_colour(line.service_fqn)}]{escape(name)} |[/] {marker}"
        if raw:  # as written: rich would drop BEL, CR and others
            out.console.print(prefix, end="")
            out.console.file.write(message + "\n")
        else:
            out.console.print(prefix + text)
    else:
        sys.stdout.write(f"{when} {name} {line.level:<5} {message}\n")


class _Selection:
    """Which lines `hive logs` shows: of the services named (patterns), matching --grep."""

    def __init__(self, patterns: list[str], grep: str | None) -> None:
        self.patterns = patterns
        try:
            self.grep = re.compile(grep) if grep else None
        except re.error as exc:
            fail(f"--grep {grep!r} is not a valid regular expression: {exc}")

    def __call__(self, line: LogLine) -> bool:
        if len(self.patterns) > 1:
            from fnmatch import fnmatchcase

            if not any(fnmatchcase(line.service_fqn, p) or fnmatchcase(line.service_fqn.partition("#")[0], p)
                       for p in self.patterns):
                return False
        return self.grep is None or self.grep.search(line.message) is not None

    @property
    def daemon_pattern(self) -> str | None:
        """What the daemon is asked for: the one pattern, or everything to filter here."""
        return self.patterns[0] if len(self.patterns) == 1 else None


def _history(client: BlockingClient, selection: _Selection, tail: int, since: datetime | None,
             until: datetime | None, level: str | None) -> list[LogLine]:
    """The last ``tail`` lines of every service named, merged in time order."""
    everything = selection.grep is not None or until is not None  # filtered here: ask for all
    lines: list[LogLine] = []
    patterns: list[str | None] = [*selection.patterns] or [None]
    for pattern in patterns:
        lines += client.get_logs(pattern, lines=None if everything else tail, since=since, level=level)
    lines = [line for line in lines if selection(line) and (until is None or line.timestamp <= until)]
    lines.sort(key=lambda line: line.timestamp)
    return lines[-tail:] if tail > 0 else []


@click.command()
@click.argument("fqns", nargs=-1, metavar="[SERVICE]...", shell_complete=complete_fqn)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--tail", type=click.IntRange(0), default=100, show_default=True, help="Lines of history first.")
@click.option("--since", help="Only lines after: a duration (10m, 2h) or an ISO timestamp.")
@click.option("--until", help="Only lines before: a duration (5m: five minutes ago) or an ISO timestamp.")
@click.option("--grep", metavar="REGEX", help="Only lines whose text matches (Python regular expression).")
@click.option("--level", help="Minimum level: trace debug info notice warn error fatal.")
@click.option("--raw", is_flag=True, help="On a terminal, pass control sequences through (shown escaped otherwise).")
@json_option
@pass_state
def logs(state: CliState, fqns: tuple[str, ...], follow: bool, tail: int, since: str | None,
         until: str | None, grep: str | None, level: str | None, raw: bool) -> None:
    """Show service output: everything, a source `proj:*`, or services `web db` (a bare
    name is this project's), merged in time order, each service in its own colour on a terminal."""
    client = state.client()
    patterns = [in_project(client, text) for text in fqns]
    selection = _Selection(patterns, grep)
    out = state.out
    since_time = parse_since(since) if since else None
    until_time = parse_since(until, "--until") if until else None
    history = _history(client, selection, tail, since_time, until_time, level)
    width = max((len(line.service_fqn) for line in history), default=0)
    for line in history:
        out.json(line) if state.json_mode else _print_line(out, line, width, raw)
    if not follow or until_time is not None:
        return
    sys.stdout.flush()
    client.timeout = None
    with client.stream_logs(selection.daemon_pattern, level=level, tail=0) as stream:
        for line in stream:
            if not selection(line):
                continue
            width = max(width, len(line.service_fqn))
            out.json(line) if state.json_mode else _print_line(out, line, width, raw)
            sys.stdout.flush()


@click.command()
@click.argument("fqn", metavar="SERVICE", shell_complete=complete_fqn)
@click.argument("count", type=click.IntRange(0, 1000), metavar="N")
@json_option
@pass_state
def scale(state: CliState, fqn: str, count: int) -> None:
    """Run N copies of a service (instance 0 keeps its ports; the others get free ones)."""
    client = state.client()
    client.timeout = max(client.timeout or 0, 300)
    target = resolve_fqn(client, fqn)
    client.scale_service(target, count)
    listed = [s for s in client.list_services(target.partition(":")[0]) if s.name == target.partition(":")[2]]
    if state.json_mode:
        state.out.json({"service": target, "instances": count, "running": listed})
    else:
        print_services(state.out, listed)


@service.command("build")
@click.argument("fqn", metavar="SERVICE", shell_complete=complete_fqn)
@json_option
@pass_state
def service_build(state: CliState, fqn: str) -> None:
    """Run the service's build step now (its output goes to `hive logs`)."""
    client = state.client()
    client.timeout = None  # a build takes what it takes; Ctrl-C to give up waiting
    target = resolve_fqn(client, fqn)
    message = client.build_service(target)
    if state.json_mode:
        state.out.json({"built": target, "message": message})
    else:
        state.out.line(message or f"{target} built")


@click.command()
@json_option
@pass_state
def exposed(state: CliState) -> None:
    """Who exposes what (`expose`), and who uses it (`uses`)."""
    listed = state.client().list_exposed()
    if state.json_mode:
        state.out.json(listed)
        return
    rows = [
        [e.name, f"{e.source}:{e.service}", "yes" if e.has_secret else "no",
         ",".join(e.vars) or "-", "-" if e.healthy is None else ("yes" if e.healthy else "no"),
         ",".join(e.consumers) or "-"]
        for e in listed
    ]
    state.out.table(["NAME", "PROVIDER", "SECRET", "VARS", "HEALTHY", "USED BY"], rows,
                    empty="nothing is exposed (see `expose` in docs/hive-yaml.md)")


@click.group()
def secret() -> None:
    """Secrets for `expose`."""


@secret.command("hash")
@click.option("--secret", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The secret (asked for when not given).")
def secret_hash(secret: str) -> None:
    """Print a salted hash of a secret, to put in hive.yaml instead of the secret itself."""
    from hive.daemon.exposure import random_hash

    click.echo(random_hash(secret))
