"""`hive ui`: a terminal dashboard (textual) of the daemon's services.

States and logs come from the daemon's streams, never from polling: the table follows
the service stream (each change is pushed), the log pane follows the selected service's
log stream, or every service's (merged, each line prefixed by its service). The timers
are local: one redraws the uptime column from each uptime the daemon sent, plus the time
passed since; one samples CPU and memory of the pids the stream gave (:mod:`._usage`):
a rate needs two readings, which no event can push.
Imported only by `hive ui`, so textual costs nothing to the other commands.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Input, Log

from hive_client import DaemonClient, DaemonError, HiveError, ServiceInfo

from ._output import format_uptime
from ._reasons import reason
from ._usage import Usage, UsageSampler, format_cpu, format_memory

__all__ = ["COLUMNS", "Dashboard"]

COLUMNS = ("service", "state", "health", "pid", "cpu", "mem", "restarts", "uptime", "reason")
LOG_TAIL = 200  # lines of history the log pane starts with
LOG_KEPT = 5_000  # lines kept for a search to go through
USAGE_EVERY = 2.0  # seconds between two CPU/memory samples
_HEALTH = {True: "healthy", False: "unhealthy", None: "-"}


def _cells(info: ServiceInfo, services: dict[str, ServiceInfo], usage: Usage | None) -> dict[str, str]:
    return {
        "service": info.fqn,
        "state": info.state,
        "health": _HEALTH[info.healthy],
        "pid": str(info.pid) if info.pid else "-",
        "cpu": format_cpu(usage) if info.pid else "-",
        "mem": format_memory(usage) if info.pid else "-",
        "restarts": str(info.restart_count),
        "uptime": format_uptime(info) if info.pid else "-",
        "reason": reason(info, services),
    }


class Dashboard(App[None]):
    """Services above, the selected one's logs (or all, merged) below; keys act on the
    selected service."""

    TITLE = "Hive"
    CSS = """
    #services { height: 1fr; }
    #logs { height: 1fr; border-top: solid $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("r", "restart", "Restart"),
        Binding("plus", "scale(1)", "Scale +1", key_display="+"),
        Binding("minus", "scale(-1)", "Scale -1", key_display="-"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("m", "toggle_merged", "All logs"),
        Binding("f", "search", "Search logs"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, socket: str | None = None) -> None:
        super().__init__()
        self.socket = socket
        self.services: dict[str, ServiceInfo] = {}
        self.received: dict[str, float] = {}  # monotonic time each service's info came
        self.client: DaemonClient | None = None
        self.selected: str | None = None
        self.filter_text = ""
        self.usage: dict[str, Usage] = {}
        self._sampler = UsageSampler()
        self.merged = False  # the log pane: every service's lines, or the selected one's
        self.log_lines: deque[tuple[str, str]] = deque(maxlen=LOG_KEPT)  # (fqn, line) shown or not
        self.search: re.Pattern[str] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            box = Input(placeholder="filter services (Enter to apply, Esc to clear)", id="filter")
            box.display = False
            yield box
            yield DataTable(id="services", cursor_type="row", zebra_stripes=True)
            search = Input(placeholder="search logs: a regular expression, any case (Esc to clear)",
                           id="log-search")
            search.display = False
            yield search
            yield Log(id="logs", max_lines=LOG_KEPT)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#services", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.focus()  # keys act on services; the filter takes them only after `/`
        self.follow_services()
        self.set_interval(1.0, self._redraw_uptime)
        self.set_interval(USAGE_EVERY, self.sample_usage)

    # --- the service stream -------------------------------------------------------------

    @work(exclusive=True, group="services")
    async def follow_services(self) -> None:
        """The daemon connection for the app's life; each pushed change redraws its row."""
        try:
            async with DaemonClient(self.socket, timeout=None, client_name="hive-ui") as client:
                self.client = client
                async with client.subscribe_services() as stream:
                    async for info in stream:
                        self.services[info.fqn] = info
                        self.received[info.fqn] = time.monotonic()
                        self._show(info)
        except HiveError as exc:
            self.sub_title = f"disconnected: {exc}"
            self.notify(f"{exc}", title="daemon", severity="error", timeout=30)
        finally:
            self.client = None

    def _visible(self, fqn: str) -> bool:
        return self.filter_text.lower() in fqn.lower()

    def _show(self, info: ServiceInfo) -> None:
        table = self.query_one("#services", DataTable)
        cells = _cells(info, self.services, self.usage.get(info.fqn))
        if not self._visible(info.fqn):
            if info.fqn in table.rows:
                table.remove_row(info.fqn)
            return
        if info.fqn in table.rows:
            for column, value in cells.items():
                table.update_cell(info.fqn, column, value, update_width=True)
        else:
            table.add_row(*(cells[c] for c in COLUMNS), key=info.fqn)
            table.sort("service")
            self._follow_cursor()

    def _under_cursor(self) -> str | None:
        table = self.query_one("#services", DataTable)
        if not table.row_count:
            return None
        key: str | None = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return key

    def _follow_cursor(self) -> None:
        """The selected service is the one under the cursor (rows move as they sort in)."""
        fqn = self._under_cursor()
        if fqn is not None:
            self._select(fqn)

    def _redraw_uptime(self) -> None:
        table = self.query_one("#services", DataTable)
        now = time.monotonic()
        for fqn, info in self.services.items():
            if info.pid and fqn in table.rows:
                since = now - self.received.get(fqn, now)
                table.update_cell(fqn, "uptime", format_uptime(info, since), update_width=True)

    @work(exclusive=True, group="usage", thread=True)
    def sample_usage(self) -> None:
        """On a thread: reading /proc for a hundred process trees takes milliseconds."""
        pids = {fqn: info.pid for fqn, info in list(self.services.items()) if info.pid}
        usage = self._sampler.sample(pids)
        self.call_from_thread(self._show_usage, usage)

    def _show_usage(self, usage: dict[str, Usage]) -> None:
        self.usage = usage
        table = self.query_one("#services", DataTable)
        for fqn, info in self.services.items():
            if fqn in table.rows:
                found = usage.get(fqn) if info.pid else None
                # update_width: "-" became "12.3 MiB", wider than the column drawn for it
                table.update_cell(fqn, "cpu", format_cpu(found) if info.pid else "-", update_width=True)
                table.update_cell(fqn, "mem", format_memory(found) if info.pid else "-", update_width=True)

    def _rebuild(self) -> None:
        table = self.query_one("#services", DataTable)
        table.clear()
        for info in sorted(self.services.values(), key=lambda s: s.fqn):
            if self._visible(info.fqn):
                cells = _cells(info, self.services, self.usage.get(info.fqn))
                table.add_row(*(cells[c] for c in COLUMNS), key=info.fqn)
        self._follow_cursor()

    # --- the selected service's logs ----------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._select(event.row_key.value)

    def _select(self, fqn: str) -> None:
        if fqn == self.selected:
            return
        self.selected = fqn
        if not self.merged:
            self._restart_logs()

    def _restart_logs(self) -> None:
        """Empty the pane and follow what it shows now: the selected service, or all."""
        self.query_one("#logs", Log).clear()
        self.log_lines.clear()
        self._title_logs()
        if self.merged:
            self.follow_logs(None)
        elif self.selected is not None:
            self.follow_logs(self.selected)

    def _title_logs(self) -> None:
        what = "all services" if self.merged else (self.selected or "")
        search = f"  search: {self.search.pattern}" if self.search is not None else ""
        self.query_one("#logs", Log).border_title = f"logs: {what}{search}"

    @work(exclusive=True, group="logs")
    async def follow_logs(self, fqn: str | None) -> None:
        # The service stream's worker opens the connection; the logs share it.
        client = self.client
        if client is None:
            async with DaemonClient(self.socket, timeout=None, client_name="hive-ui-logs") as own:
                await self._copy_logs(own, fqn)
        else:
            await self._copy_logs(client, fqn)

    async def _copy_logs(self, client: DaemonClient, fqn: str | None) -> None:
        try:
            async with client.stream_logs(fqn, tail=LOG_TAIL) as stream:
                async for line in stream:
                    prefix = f"{line.service_fqn} | " if fqn is None else ""
                    self._add_log_line(line.service_fqn, f"{line.timestamp:%H:%M:%S} {prefix}{line.message}")
        except HiveError as exc:
            self.query_one("#logs", Log).write_line(f"-- log stream ended: {exc}")

    def _add_log_line(self, fqn: str, text: str) -> None:
        self.log_lines.append((fqn, text))
        if self._log_shown(fqn, text):
            self.query_one("#logs", Log).write_line(text)

    def _log_shown(self, fqn: str, text: str) -> bool:
        """Merged lines follow the service filter too; the search keeps what matches."""
        if self.merged and not self._visible(fqn):
            return False
        return self.search is None or self.search.search(text) is not None

    def _redraw_logs(self) -> None:
        log = self.query_one("#logs", Log)
        log.clear()
        log.write_lines([text for fqn, text in self.log_lines if self._log_shown(fqn, text)])
        self._title_logs()

    def action_toggle_merged(self) -> None:
        self.merged = not self.merged
        self._restart_logs()

    def action_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.focus()

    def _apply_search(self, text: str) -> None:
        """A pattern that does not compile yet (typing ``a[``) keeps the last one and
        says why in the search box's border."""
        box = self.query_one("#log-search", Input)
        try:
            self.search = re.compile(text, re.IGNORECASE) if text else None
        except re.error as exc:
            box.border_title = f"not a regular expression: {exc}"
            return
        box.border_title = ""
        self._redraw_logs()

    # --- keys ---------------------------------------------------------------------------

    # A key acts on the row under the cursor now: a cursor move's highlight message may
    # not have been handled yet when the next key comes.

    def action_start(self) -> None:
        self._act("start", self._under_cursor())

    def action_stop(self) -> None:
        self._act("stop", self._under_cursor())

    def action_restart(self) -> None:
        self._act("restart", self._under_cursor())

    def action_scale(self, step: int) -> None:
        self._act("scale", self._under_cursor(), step)

    @work(group="actions")
    async def _act(self, action: str, fqn: str | None, step: int = 0) -> None:
        client = self.client
        if fqn is None or client is None:
            return
        try:
            call: Any
            if action == "start":
                call = client.start_service(fqn)
            elif action == "stop":
                call = client.stop_service(fqn)
            elif action == "restart":
                call = client.restart_service(fqn)
            else:
                count = max(0, self.services[fqn].instances + step)
                call = client.scale_service(fqn, count)
            await call
        except DaemonError as exc:
            self.notify(f"{fqn}: {exc.message}", title=f"{action} failed", severity="error")

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        """Esc: clears the box being typed in (the search, else the filter)."""
        search = self.query_one("#log-search", Input)
        if search.display and (search.has_focus or not self.query_one("#filter", Input).display):
            search.value = ""
            search.display = False
            self._apply_search("")
        else:
            box = self.query_one("#filter", Input)
            box.value = ""
            box.display = False
            self._apply_filter("")
        self.query_one("#services", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "log-search":
            self._apply_search(event.value)
        else:
            self._apply_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#services", DataTable).focus()

    def _apply_filter(self, text: str) -> None:
        self.filter_text = text
        self._rebuild()
        if self.merged:
            self._redraw_logs()
