"""``hive ui``: the terminal dashboard. textual is the optional ``[ui]`` extra, imported here
only when the command runs."""

from __future__ import annotations

import click

from ._common import CliState, fail, pass_state

__all__ = ["ui"]


@click.command()
@pass_state
def ui(state: CliState) -> None:
    """A live dashboard: every service (state, health, pid, CPU, memory, restarts, uptime,
    reason), the selected one's logs or all merged; keys s start, x stop, r restart, +/-
    scale, / filter, m all logs, f search logs, q quit."""
    try:
        from ._dashboard import Dashboard
    except ModuleNotFoundError as exc:
        if exc.name != "textual" and not (exc.name or "").startswith("textual."):
            raise
        fail("`hive ui` needs textual, which is not installed",
             hint="pip install 'hive-supervisor[ui]'")
    state.client().status()  # a daemon that is not running is one line, not a blank screen
    state.close()
    Dashboard(state.socket).run()
