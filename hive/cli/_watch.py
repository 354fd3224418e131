"""`hive up --watch`: restart the services of a project when its files change.

The watch lives in the CLI, for as long as the `hive up --watch` that asked for it (as
`docker compose watch` does): it belongs to the person editing the files, ends with their
Ctrl-C, and needs nothing new from the daemon; the rebuilds and restarts are ordinary
build and restart requests. Each plan (a service's own `watch:` in hive.yaml, or the
project's) is watched on its own. Changes come from inotify through watchfiles (no
polling); a burst of them (an editor's save, a `git checkout`) is one batch once no new
change came for ``debounce`` ms, and one batch is one restart (after one build, for a
plan that rebuilds) of each of the plan's services.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import watchfiles

from hive_client import DaemonClient, DaemonError

from ._watch_plan import MAX_BATCH_MS, SHOWN_PATHS, WatchPlan

__all__ = ["watch_and_restart"]


class _Filter(watchfiles.DefaultFilter):
    """watchfiles' defaults (.git, __pycache__, editor swap files, .venv...) plus the plan's globs."""

    def __init__(self, plan: WatchPlan) -> None:
        super().__init__()
        self._plan = plan

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return super().__call__(change, path) and not self._plan.ignored(path)


def describe(plan: WatchPlan, changes: set[tuple[watchfiles.Change, str]]) -> str:
    paths = sorted({plan.relative(path) for _, path in changes})
    shown = ", ".join(paths[:SHOWN_PATHS])
    more = f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
    return f"{len(paths)} file{'s' if len(paths) != 1 else ''} changed ({shown}{more})"


async def watch_and_restart(
    socket: str | None,
    plans: Sequence[WatchPlan],
    report: Callable[[str, bool], None],
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Until cancelled: each batch of changes under a plan's paths restarts every service
    of that plan (at once; rebuilt first when it says so), then ``report(line, ok)`` says
    what changed and how each went. A failure is reported, and watching goes on (the next
    save may fix it)."""
    async with DaemonClient(socket, timeout=None, client_name="hive-watch") as client:

        async def follow(plan: WatchPlan) -> None:
            async for changes in watchfiles.awatch(
                *plan.paths, watch_filter=_Filter(plan), step=plan.debounce_ms,
                debounce=max(MAX_BATCH_MS, plan.debounce_ms),
            ):
                failures = await _restart_all(client, plan)
                words = describe(plan, changes)
                done = "rebuilt and restarted" if plan.rebuild else "restarted"
                if failures:
                    report(f"{words}: {'; '.join(failures)}", False)
                else:
                    report(f"{words}: {done} {', '.join(plan.services)}", True)

        async with anyio.create_task_group() as group:
            for plan in plans:
                group.start_soon(follow, plan)
            # watchfiles adds its inotify watches on the generator's first step, before it
            # blocks in its thread: once every task here is blocked, a change is seen.
            await anyio.wait_all_tasks_blocked()
            ready()


async def _restart_all(client: DaemonClient, plan: WatchPlan) -> list[str]:
    failures: list[str] = []

    async def restart(fqn: str) -> None:
        if plan.rebuild:
            try:
                await client.build_service(fqn)
            except DaemonError as exc:
                # Not restarted: what runs now keeps running rather than a broken build.
                failures.append(f"{fqn} not restarted, its build failed: {exc.message}")
                return
        try:
            await client.restart_service(fqn)
        except DaemonError as exc:
            failures.append(f"{fqn} not restarted: {exc.message}")

    async with anyio.create_task_group() as group:
        for fqn in plan.services:
            group.start_soon(restart, fqn)
    return failures

