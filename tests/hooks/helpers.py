"""Shared helpers for the hook and build tests: real configs, a recording sink, process checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from hive.config import BuildSpec, HookStep, parse_service_entry

RUNNER: dict[str, Any] = {"type": "script", "script": {"run": "true"}}


def hook_steps(root: Path, event: str, steps: list[dict[str, Any]]) -> list[HookStep]:
    """The steps of one event, parsed as a service entry so the defaults are the real ones."""
    service = parse_service_entry(
        "svc", {"runner": RUNNER, "hooks": {event: steps}}, root=root, source_name="p"
    )
    found: list[HookStep] = getattr(service.hooks, event.replace("-", "_"))
    return found


def build_spec(root: Path, **build: Any) -> BuildSpec:
    service = parse_service_entry(
        "svc", {"runner": RUNNER, "build": build}, root=root, source_name="p"
    )
    assert service.build is not None
    return service.build


def base_env(**extra: str) -> dict[str, str]:
    """A minimal complete environment (what the daemon would pass), plus ``extra``."""
    return {"PATH": os.environ.get("PATH", os.defpath), **extra}


class Sink:
    """An OutputSink that records every (stream, line)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, text: str) -> None:
        self.lines.append((stream, text))

    def stream(self, name: str) -> list[str]:
        return [text for stream, text in self.lines if stream == name]

    def hive(self) -> list[str]:
        return self.stream("hive")


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def pid_written(path: Path) -> bool:
    """True once ``path`` holds a complete pid line (``echo $! > path`` is one write)."""
    try:
        return path.read_text().endswith("\n")
    except FileNotFoundError:
        return False


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def all_gone(pids: list[int]) -> bool:
    return all(gone(pid) for pid in pids)
