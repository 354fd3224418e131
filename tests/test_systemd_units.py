"""The shipped units are valid and the system unit is hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.mark.parametrize("unit", ["hive.service", "hive.socket", "user/hive.service", "user/hive.socket"])
def test_unit_verifies(unit: str) -> None:
    result = subprocess.run([ANALYZE, "verify", str(UNITS / unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_system_unit_exposure() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(UNITS / "hive.service")],
        capture_output=True, text=True,
    )
    match = re.search(r"Overall exposure level for hive.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


def test_units_are_type_notify_with_watchdog() -> None:
    for unit in ("hive.service", "user/hive.service"):
        text = (UNITS / unit).read_text()
        assert "Type=notify" in text
        assert "WatchdogSec=" in text
        assert "start --foreground" in text
