"""The ``hive`` command line (click): every command but the lean ``hive status``.

Client commands import only ``hive_client`` (blocking, stdlib sockets) and click;
rich is loaded only to draw on a terminal; nothing from the daemon is imported
except by ``hive start``.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from hive_client import __version__

from ._common import CliState, run_reporting_errors

__all__ = ["cli", "main"]

_COMPLETION_SHELLS = ("bash", "zsh", "fish")

# Each command's module is imported only when that command runs.
_COMMANDS: dict[str, str] = {
    "start": "daemon_cmds:start",
    "stop": "daemon_cmds:stop",
    "status": "daemon_cmds:status",
    "ping": "daemon_cmds:ping",
    "reload": "daemon_cmds:reload",
    "events": "daemon_cmds:events",
    "up": "up_cmd:up",
    "ui": "ui_cmd:ui",
    "down": "service_cmds:down",
    "services": "service_cmds:services",
    "service": "service_cmds:service",
    "logs": "service_cmds:logs",
    "restart": "service_cmds:restart",
    "scale": "service_cmds:scale",
    "exposed": "service_cmds:exposed",
    "secret": "service_cmds:secret",
    "source": "source_cmds:source",
    "config": "config_cmds:config",
    "plugins": "plugin_cmds:plugins",
    "backup": "backup_cmds:backup",
    "fleet": "fleet_cmds:fleet",
}


# Commands people type from other tools (compose, pm2, systemctl), and Hive's for them.
_FOREIGN: dict[str, str] = {
    "ps": "hive services",
    "ls": "hive services",
    "list": "hive services",
    "log": "hive logs SERVICE",
    "rm": "hive source remove SOURCE",
    "add": "hive source add PATH",
    "kill": "hive service stop SERVICE",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(f"{__package__}.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            name = args[0]
            rest = " ".join(args[1:])
            known = _FOREIGN.get(name)
            if known is not None:
                example = known.rsplit(" ", 1)[0] + f" {rest}" if rest and known[-1].isupper() else known
                raise click.UsageError(f"no command {name!r}; did you mean `{example}`?", ctx) from None
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            suggestion = f"; did you mean `hive {close[0]}`?" if close else "; `hive --help` lists the commands"
            raise click.UsageError(f"no command {name!r}{suggestion}", ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="hive")
@click.option("--socket", envvar="HIVE_SOCKET", metavar="PATH", help="Daemon socket (default: $HIVE_HOME/hive.sock).")
@click.option("--home", metavar="DIR", help="HIVE_HOME (default: $HIVE_HOME or ~/.hive).")
@click.option("--json", "json_mode", is_flag=True, help="Print JSON instead of text (every command).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for each answer.")
@click.pass_context
def cli(ctx: click.Context, socket: str | None, home: str | None, json_mode: bool, timeout: float) -> None:
    """Hive: keep your services running.

    \b
    hive start                  start the daemon
    hive up [PATH]              add a project (hive.yaml) and start its services
    hive restart SERVICE...     restart services (a bare name: this project's)
    hive services               what runs, its health, pids, ports
    hive logs -f [SERVICE]      follow the output
    hive events                 follow what happens
    """
    if home:
        # Everything below (socket discovery, the spawned daemon) reads HIVE_HOME.
        os.environ["HIVE_HOME"] = home
    state = ctx.ensure_object(CliState)
    state.socket = socket
    state.home = home
    state.json_mode = state.json_mode or json_mode
    state.timeout = timeout
    ctx.call_on_close(state.close)


@cli.command()
@click.argument("shell", type=click.Choice(_COMPLETION_SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(hive completion bash)"."""
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None
    click.echo(completion_class(cli, {}, "hive", "_HIVE_COMPLETE").source())


def _run() -> None:
    """click without its standalone mode: usage errors and Ctrl-C reach
    run_reporting_errors (one line; quiet 130), never click's three-line usage or "Aborted!"."""
    code = cli.main(prog_name="hive", standalone_mode=False)
    if isinstance(code, int):  # --help, --version and ctx.exit() answer an exit code
        sys.exit(code)


def _interrupted(_signal: int, _frame: object) -> None:
    """Ctrl-C ends the command quietly with 130 (`hive logs -f`, `hive events`): a
    SystemExit, which click lets through without its "Aborted!" or blank line."""
    raise SystemExit(130)


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, _interrupted)
    run_reporting_errors(_run)
