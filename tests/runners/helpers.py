"""Helpers for the runner tests: specs with a tag to find every process of a test, and
deadline-bounded waits on conditions no event announces (a process appearing, a line in
a capture file)."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from runners.base import RunSpec
from tests.support import wait_until

T = TypeVar("T")
TAG_VAR = "HIVE_TEST_TAG"


def make_spec(home: Path, command: str, *, tag: str | None = None, env: dict[str, str] | None = None,
              **fields: Any) -> RunSpec:
    """A spec running in ``home/work`` with capture files in ``home/run``; every process it
    starts carries ``HIVE_TEST_TAG=<tag>`` (pass ``env`` to replace the environment)."""
    work = home / "work"
    work.mkdir(exist_ok=True)
    full_env = dict(os.environ) if env is None else dict(env)
    full_env[TAG_VAR] = tag or uuid.uuid4().hex
    fields.setdefault("working_dir", str(work))
    fields.setdefault("stdout_path", str(home / "run" / "svc.out"))
    fields.setdefault("stderr_path", str(home / "run" / "svc.err"))
    return RunSpec(fqn=fields.pop("fqn", "proj:svc"), command=command, env=full_env, **fields)


def tag_of(spec: RunSpec) -> str:
    return spec.env[TAG_VAR]


def tagged(tag: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose environment carries ``tag``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(TAG_VAR) == tag:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# The same re-check under a deadline the rest of the suite uses.
until = wait_until


async def output_contains(path: str, text: str, *, timeout: float = 10.0) -> str:
    def check() -> str:
        content = read(path)
        return content if text in content else ""

    return await until(check, timeout=timeout, what=f"{text!r} in {path}")


def read(path: str | Path) -> str:
    """A capture file's content ('' while it does not exist)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""


def kill_tagged(tag: str) -> None:
    """Last-resort cleanup so that a failing test leaves nothing running."""
    for process in tagged(tag):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def is_podman_service(process: psutil.Process) -> bool:
    """Whether the process is podman's API service (``podman system service``)."""
    with contextlib.suppress(psutil.Error):
        return process.cmdline()[1:3] == ["system", "service"]
    return False


def engines_own(process: psutil.Process, before: set[psutil.Process]) -> bool:
    """Whether a child of the test's process belongs to an engine, not to the runner: it
    descends from a process that was there ``before``, or from podman's API service (the
    runner may start it under the test's process), as the ``runc kill`` of a stop does."""
    with contextlib.suppress(psutil.Error):
        for ancestor in [process, *process.parents()]:
            if ancestor in before or is_podman_service(ancestor):
                return True
        return False
    return True  # it ended meanwhile: nothing to count


@contextlib.contextmanager
def children_seen(
    pid: int, keep: Callable[[psutil.Process], bool] = lambda process: True
) -> Iterator[set[tuple[str, ...]]]:
    """The command lines of every descendant of process ``pid`` that ``keep`` accepts, seen
    while the block runs (a thread samples them: a `docker exec` lives tens of
    milliseconds, the sampling is finer)."""
    seen: set[tuple[str, ...]] = set()
    done = threading.Event()
    parent = psutil.Process(pid)

    def sample() -> None:
        while not done.is_set():
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if keep(child):
                        seen.add(tuple(child.cmdline()))
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()
