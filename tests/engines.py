"""The container engines the tests need: `require_engine` skips a test when an engine (or a
compose implementation) is not usable here, and fails it under CI=true, where
scripts/ci-engines.sh must have set them up."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

IMAGE = "localhost/hive-test:busybox"  # imported into both engines by scripts/ci-engines.sh


@functools.cache
def engine_problem(engine: str) -> str | None:
    """Why ``engine`` cannot run the tests here, or None."""
    if shutil.which(engine) is None:
        return f"{engine} is not installed (sudo scripts/ci-engines.sh installs it)"
    try:
        probe = subprocess.run([engine, "image", "inspect", IMAGE], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"{engine} did not answer within 60 s"
    if probe.returncode != 0:
        return f"{engine} cannot use {IMAGE} ({probe.stderr.strip()[:200]}); run sudo scripts/ci-engines.sh"
    return None


def require_engine(engine: str, *programs: str) -> None:
    """Skip (or under CI=true fail) unless ``engine`` and ``programs`` are usable."""
    problem = engine_problem(engine)
    for program in programs:
        if problem is None and shutil.which(program) is None:
            problem = f"{program} is not installed"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {problem}")
        pytest.skip(problem)
