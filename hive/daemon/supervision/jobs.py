"""Commands against one service, queued and run one at a time by its owner.

Every command that acts on a service's instances (start, stop, restart, scale, remove,
replace, rollout) is a :class:`Job` handed to the service's :class:`Owner`. The owner runs its
jobs in order, one at a time, in a task of its own; so two commands never interleave
on one service, and each command sees the instances as the previous one left them.

A job that arrives while another of the same service waits in the queue is merged
with it by :data:`MERGE`, as systemd merges jobs: a stop replaces a start not yet
begun, a start joins a restart, and so on. The job already running is never merged: a
stop under way finishes first.

A job never waits without a bound: a stop waits for the instances it signalled (the
runner kills after the grace period), and a start only launches; callers wait for
the outcome outside the owner, with their own deadline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import anyio
import anyio.abc

__all__ = ["MERGE", "Job", "JobKind", "Owner", "OwnerClosed"]

log = logging.getLogger("hive.supervisor")


class JobKind(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    SCALE = "scale"  # to job.argument instances
    REPLACE = "replace"  # run job.argument (a new configuration): stop, swap, start again
    REMOVE = "remove"  # stop, then the service is gone
    ROLLOUT = "rollout"  # blue-green: a new generation beside the old, switched once healthy


K = JobKind
# (kind queued, kind arriving) -> the one queued job both become. Pairs not listed queue
# one after the other (jobs with an argument keep their order).
MERGE: dict[tuple[JobKind, JobKind], JobKind] = {
    (K.START, K.START): K.START,
    (K.START, K.STOP): K.STOP,  # conflicting: the newer one wins, as in systemd
    (K.START, K.RESTART): K.RESTART,
    (K.STOP, K.START): K.START,
    (K.STOP, K.STOP): K.STOP,
    (K.STOP, K.RESTART): K.RESTART,
    (K.RESTART, K.START): K.RESTART,  # a restart starts it too
    (K.RESTART, K.STOP): K.STOP,
    (K.RESTART, K.RESTART): K.RESTART,
    # A rollout starts a service that does not run, and restarts one that does.
    (K.START, K.ROLLOUT): K.ROLLOUT,
    (K.STOP, K.ROLLOUT): K.ROLLOUT,
    (K.ROLLOUT, K.START): K.ROLLOUT,
    (K.ROLLOUT, K.STOP): K.STOP,
    (K.ROLLOUT, K.ROLLOUT): K.ROLLOUT,
}


class Job:
    """One command's work on one service, and its result once done."""

    def __init__(self, kind: JobKind, argument: Any = None) -> None:
        self.kind = kind
        self.argument = argument
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = anyio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error
        self._done.set()

    async def wait(self) -> Any:
        """The job's result (its error raised), once it has run."""
        if not self._done.is_set():  # a command of many services collects many done jobs
            await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class OwnerClosed(Exception):
    """The service is gone (removed, or the daemon shuts down): it takes no more jobs."""


class Owner:
    """Runs one service's jobs in order; its task lives while there are jobs."""

    def __init__(
        self, name: str, task_group: anyio.abc.TaskGroup, run: Callable[[Job], Awaitable[Any]]
    ) -> None:
        self.name = name
        self._tasks = task_group
        self._run = run
        self._queue: deque[Job] = deque()
        self.current: Job | None = None
        self.closed = False
        self._idle: anyio.Event | None = None

    @property
    def idle(self) -> bool:
        return self.current is None and not self._queue

    async def wait_idle(self) -> None:
        """Until every job queued so far (and any merged into them) has run."""
        if self.idle:
            return
        if self._idle is None:
            self._idle = anyio.Event()
        await self._idle.wait()

    def submit(self, kind: JobKind, argument: Any = None) -> Job:
        """Queue a job (merged with the last queued one when MERGE says so)."""
        if self.closed:
            raise OwnerClosed(self.name)
        if self._queue and argument is None and self._queue[-1].argument is None:
            last = self._queue[-1]
            merged = MERGE.get((last.kind, kind))
            if merged is not None:
                last.kind = merged  # one job now; both callers wait for it
                return last
        job = Job(kind, argument)
        self._queue.append(job)
        if self.current is None and len(self._queue) == 1:
            self._tasks.start_soon(self._drain, name=f"owner {self.name}")
        return job

    def claim(self, kind: JobKind) -> Job | None:
        """Mark the owner busy with a job its caller runs itself, if it is idle (else
        None: submit instead). Jobs that arrive meanwhile queue behind it, as behind any
        running job; :meth:`release` ends it. A stop of many services runs as one
        claimed job per service, in one sweep, without a task per service.
        Bench: ``bench/peers.py`` "stop of 100"."""
        if self.closed or not self.idle:
            return None
        job = self.current = Job(kind)
        return job

    def release(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        """End a claimed job; what queued behind it runs next."""
        assert self.current is job
        job.finish(result, error)
        self.current = None
        if self._queue:
            self._tasks.start_soon(self._drain, name=f"owner {self.name}")
            return
        idle, self._idle = self._idle, None
        if idle is not None:
            idle.set()

    def close(self) -> None:
        """Take no more jobs (the queued ones still run)."""
        self.closed = True

    async def _drain(self) -> None:
        while self._queue:
            job = self.current = self._queue.popleft()
            try:
                result = await self._run(job)
            except Exception as exc:  # the job's caller gets it; the owner goes on
                log.debug("job %s of %s failed: %r", job.kind, self.name, exc)
                job.finish(error=exc)
            except BaseException:
                job.finish(error=OwnerClosed(self.name))
                raise
            else:
                job.finish(result)
            finally:
                self.current = None
        idle, self._idle = self._idle, None
        if idle is not None:
            idle.set()
