"""The example plugin of docs/plugins.md is real code: it imports, validates its
settings, and records a crash through a real daemon's client."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hive.plugin import CorePlugin
from hive_client import DaemonClient, ServiceCrashed
from tests.support import DaemonProcess

pytestmark = pytest.mark.anyio

DOC = Path(__file__).parents[2] / "docs" / "plugins.md"


def _example() -> dict[str, Any]:
    code = re.search(r"```python\n(# crashlog/__init__.py\n.*?)```", DOC.read_text(), re.S)
    assert code is not None, "docs/plugins.md lost its example"
    namespace: dict[str, Any] = {"__name__": "crashlog"}
    exec(compile(code.group(1), str(DOC), "exec"), namespace)
    return namespace


async def test_the_documented_plugin_works(daemon: DaemonProcess, tmp_path: Path) -> None:
    example = _example()
    plugin_class = example["CrashLog"]
    assert issubclass(plugin_class, CorePlugin) and plugin_class.name == "crashlog"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"pth": "x"}, plugin_class.Settings)
    plugin = plugin_class()
    plugin.settings = msgspec.convert({"path": str(tmp_path / "crashes.jsonl")}, plugin_class.Settings)
    async with DaemonClient(daemon.socket) as client:
        await plugin.init(client)
        await plugin.on_event(ServiceCrashed(fqn="nope:gone", exit_code=3))
    record = json.loads((tmp_path / "crashes.jsonl").read_text())
    assert (record["fqn"], record["exit_code"], record["last_lines"]) == ("nope:gone", 3, [])
