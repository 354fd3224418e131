"""What `hive up` watches: a source's services coming up, from the daemon's service stream.

The start request runs beside the stream on one connection. The stream tells each
service's progress as it happens (no polling); the start's answer tells which starts the
daemon judged failed. A service counts as failed from the stream only once the start has
answered, so a crash left from an earlier run is never taken for this one's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from hive_client import DaemonClient, DaemonError, InstanceOutcome, LogLine, ServiceInfo

from ._reasons import Verdict, reason, verdict

__all__ = ["BringUp", "bring_up"]

LOG_LINES = 5  # of each service that did not come up


@dataclass
class BringUp:
    """The services of one `hive up`, as last seen."""

    source: str
    names: Sequence[str]  # the services asked for; empty: all of the source
    services: dict[str, ServiceInfo] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # fqn -> why the daemon judged it failed
    answered: bool = False  # the start request has answered
    timed_out: bool = False
    logs: dict[str, list[LogLine]] = field(default_factory=dict)

    def targets(self) -> list[ServiceInfo]:
        """The services this `up` waits for: the ones named (and what runs because of
        them: their dependencies), or every service of the source."""
        if not self.names:
            return sorted(self.services.values(), key=lambda s: s.fqn)
        wanted = [s for s in self.services.values()
                  if s.name in self.names or (self.answered and s.desired == "running")]
        return sorted(wanted, key=lambda s: s.fqn)

    def verdict_of(self, info: ServiceInfo) -> Verdict:
        if info.fqn in self.refused:
            return "failed"
        judged = verdict(info)
        if judged == "failed" and not self.answered:
            return "pending"  # may be what an earlier run left
        return judged

    def reason_of(self, info: ServiceInfo) -> str:
        return self.refused.get(info.fqn) or reason(info, self.services)

    def not_up(self) -> list[ServiceInfo]:
        return [s for s in self.targets() if self.verdict_of(s) != "up"]

    @property
    def settled(self) -> bool:
        """The start has answered (the daemon judged each start by its outcome, not by
        a first moment of running) and no service is on its way any more."""
        return self.answered and all(self.verdict_of(s) != "pending" for s in self.targets())

    def absorb_outcomes(self, outcomes: Sequence[InstanceOutcome]) -> None:
        for outcome in outcomes:
            if outcome.result == "failed":
                self.refused[outcome.fqn] = outcome.reason or outcome.state


async def bring_up(
    socket: str | None,
    progress: BringUp,
    limit: float,
    on_change: Callable[[BringUp], None],
) -> None:
    """Start ``progress.source`` and follow it until every target is up or failed, or
    ``limit`` seconds pass; then fetch the last log lines of those not up."""
    failure: list[DaemonError] = []
    began = datetime.now(UTC)
    async with DaemonClient(socket, timeout=None, client_name="hive-cli") as client:
        async with client.subscribe_services(progress.source) as stream, anyio.create_task_group() as group:
            with anyio.move_on_after(limit) as waiting:

                async def start() -> None:
                    try:
                        await client.start_source(progress.source, progress.names)
                    except DaemonError as exc:
                        if not exc.outcomes:
                            failure.append(exc)
                            waiting.cancel()
                        progress.absorb_outcomes(exc.outcomes)
                    progress.answered = True
                    on_change(progress)
                    if progress.settled:
                        waiting.cancel()

                group.start_soon(start)
                async for info in stream:
                    progress.services[info.fqn] = info
                    on_change(progress)
                    if progress.settled:
                        break
            progress.timed_out = waiting.cancelled_caught and not progress.settled
            group.cancel_scope.cancel()
        if failure:
            raise failure[0]
        for info in progress.not_up():
            progress.logs[info.fqn] = await client.get_logs(info.fqn, lines=LOG_LINES, since=began, timeout=10)
