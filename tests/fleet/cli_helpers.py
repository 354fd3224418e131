"""The real `hive` CLI, pointed at one hive of a test fleet."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.support import DaemonProcess, run_cli


def hive(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"HIVE_HOME": str(daemon.home), "HIVE_SOCKET": str(daemon.socket)})


def as_json(daemon: DaemonProcess, *args: str) -> Any:
    result = hive(daemon, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
