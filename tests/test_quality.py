"""Static checks run with the suite: ruff on everything, mypy --strict on the typed surface."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_ruff_clean() -> None:
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    # Files and strictness come from [tool.mypy] in pyproject.toml.
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_a_handler_routed_to_the_wrong_request(tmp_path: Path) -> None:
    snippet = tmp_path / "misrouted.py"
    snippet.write_text(
        "from hive_client import protocol as p\n"
        "from hive.daemon.dispatch import unary\n"
        "from hive.daemon.handlers import daemon\n"
        "unary(p.Ping, daemon.status)\n"
    )
    result = subprocess.run([_tool("mypy"), str(snippet)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Argument 2 to "unary" has incompatible type' in result.stdout, result.stdout
