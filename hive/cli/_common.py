"""What every CLI command shares: options, the client, and error reporting."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from hive_client import (
    BlockingClient,
    DaemonError,
    DaemonNotRunning,
    HiveError,
    NotFound,
    PermissionDenied,
    RequestTimeout,
    SocketPermissionDenied,
    resolve_socket_path,
)

from ._output import Output

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_RUNNING",
    "CliState",
    "fail",
    "json_option",
    "pass_state",
    "plugin_caller",
    "run_reporting_errors",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NOT_FOUND = 4

F = TypeVar("F", bound=Callable[..., Any])


class CliState:
    """What the root command's options set, shared by every command."""

    def __init__(self) -> None:
        self.socket: str | None = None
        self.home: str | None = None
        self.json_mode = False
        self.timeout: float | None = 30.0
        self._client: BlockingClient | None = None

    @property
    def out(self) -> Output:
        return Output(self.json_mode)

    @property
    def socket_path(self) -> str:
        return str(resolve_socket_path(self.socket))

    def client(self) -> BlockingClient:
        if self._client is None:
            self._client = BlockingClient(self.socket, timeout=self.timeout, client_name="hive-cli")
            self._client.connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_state = click.make_pass_decorator(CliState, ensure=True)


class PluginCaller:
    """Calls one plugin's commands through the daemon: ``call(state, "status", name="x")``
    is ``plugin_call(plugin, "status", {"name": "x"})``."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin

    def __call__(self, state: CliState, command: str, **args: Any) -> Any:
        return state.client().plugin_call(self.plugin, command, args)


def plugin_caller(plugin: str) -> PluginCaller:
    """The caller of ``plugin``'s commands, for a command group that fronts a plugin."""
    return PluginCaller(plugin)


def json_option(command: F) -> F:
    """``--json`` on a command, equivalent to ``hive --json COMMAND``."""

    def enable(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(CliState).json_mode = True

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=enable,
        help="Print JSON instead of text.",
    )(command)


def fail(message: str, *, hint: str = "", code: int = EXIT_FAILURE) -> NoReturn:
    Output(False).error(message, hint)
    sys.exit(code)


def run_reporting_errors(entry: Callable[[], Any]) -> None:
    """Run the CLI: one clear line and a non-zero exit for every error, no traceback."""
    try:
        entry()
    except DaemonNotRunning as exc:
        fail(
            f"the Hive daemon is not running (no daemon on {exc.socket_path})",
            hint="start it with `hive start`",
            code=EXIT_NOT_RUNNING,
        )
    except SocketPermissionDenied as exc:
        fail(str(exc))
    except NotFound as exc:
        fail(exc.message, code=EXIT_NOT_FOUND)
    except PermissionDenied as exc:
        fail(exc.message, hint="the daemon refused this user or scope")
    except DaemonError as exc:
        fail(f"{exc.message} [{exc.code}]")
    except RequestTimeout as exc:
        fail(str(exc), hint="the daemon is busy or stuck; `hive status` tells which")
    except HiveError as exc:
        fail(str(exc))
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "hive"
        message = exc.format_message()
        fail(message if "did you mean" in message.lower() else f"{message} (see `{path} --help`)", code=EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), code=exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _quiet_interrupt()


def _quiet_interrupt() -> NoReturn:
    """Ctrl-C: exit 130 without a word (what shells expect of an interrupted command).
    stdout may be a closed pipe by now: its last flush must not print a traceback."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.flush()
    sys.exit(130)
