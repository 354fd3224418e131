"""How the CLI prints: rich on a terminal, plain text when piped, JSON on request.

rich is imported only when stdout is a terminal, so scripted calls start fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ._lean import format_duration
from ._service_text import plain_fields, plain_table, uptime

if TYPE_CHECKING:
    from rich.console import Console

    from hive_client import ServiceInfo

__all__ = ["Output", "format_age", "format_duration", "format_uptime"]

_json = msgspec.json.Encoder()

# Colours by state, for rich.
STATE_STYLES = {
    "running": "green",
    "starting": "cyan",
    "stopping": "cyan",
    "backoff": "yellow",
    "draining": "yellow",
    "unhealthy": "yellow",
    "crashed": "red",
    "port_conflict": "red",
    "unknown": "yellow",
    "exited": "dim",
    "stopped": "dim",
    "error": "red",
    "loaded": "cyan",
}




def format_age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return format_duration(max(0.0, (datetime.now(UTC) - moment).total_seconds()))


def format_uptime(info: ServiceInfo, since: float = 0.0) -> str:
    """The uptime the daemon measured (plus ``since``, seconds passed here since it answered)."""
    return uptime({"uptime_secs": info.uptime_secs, "started_at": info.started_at}, since)


class Output:
    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True)
        return self._console

    # --- JSON ---------------------------------------------------------------------------

    def json(self, value: Any) -> None:
        sys.stdout.buffer.write(_json.encode(value) + b"\n")
        sys.stdout.flush()

    # --- text ---------------------------------------------------------------------------

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.tty and style:
            self.console.print(text, style=style, markup=False)
        else:
            sys.stdout.write(text + "\n")

    def markup(self, rich_text: str, plain: str) -> None:
        """Print rich markup on a terminal, ``plain`` elsewhere."""
        if self.tty:
            self.console.print(rich_text)
        else:
            sys.stdout.write(plain + "\n")

    def fields(self, title: str, rows: Sequence[tuple[str, str]], title_style: str = "bold") -> None:
        """A titled block of ``key  value`` lines."""
        if self.tty:
            from rich.table import Table

            table = Table.grid(padding=(0, 2))
            table.add_column(style="dim")
            table.add_column()
            for key, value in rows:
                table.add_row(key, value)
            self.console.print(title, style=title_style, markup=False)
            self.console.print(table)
        else:
            sys.stdout.write(plain_fields(title, rows))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        styles: Sequence[str | None] | None = None,
        state_column: int | None = None,
        empty: str = "nothing to show",
    ) -> None:
        """Rows of cells; ``state_column`` is coloured by state on a terminal."""
        if not rows:
            self.line(empty, style="dim")
            return
        if self.tty:
            from rich.table import Table

            table = Table(box=None, header_style="bold", pad_edge=False)
            for column in columns:
                table.add_column(column)
            for row in rows:
                cells = list(row)
                if state_column is not None:
                    state = cells[state_column]
                    style = STATE_STYLES.get(state, "")
                    cells[state_column] = f"[{style}]{state}[/]" if style else state
                table.add_row(*cells)
            self.console.print(table)
            return
        sys.stdout.write(plain_table(columns, rows))

    def error(self, message: str, hint: str = "") -> None:
        text = f"hive: error: {message}"
        if hint:
            text += f"\n  {hint}"
        if sys.stderr.isatty():
            from rich.console import Console

            Console(stderr=True, highlight=False).print(text, style="red", markup=False)
        else:
            sys.stderr.write(text + "\n")
