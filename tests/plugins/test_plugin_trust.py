"""[plugin_trust]: a plugin whose distribution, version and installed files match an
allowlist entry runs; any other is refused with a message saying what differs, and
the daemon starts anyway (its services must be supervised)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.conftest import StartWith, recorder_table, records
from tests.support import run_cli, wait_until

pytestmark = pytest.mark.anyio


def _pin() -> str:
    result = run_cli("plugins", "pin", "recorder")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _state(name: str) -> dict[str, object]:
    listed = json.loads(run_cli("plugins", "--json").stdout)
    return next(p for p in listed if p["name"] == name)


async def test_a_pinned_plugin_runs(start_with: StartWith, hive_env: Path) -> None:
    pin = _pin()
    assert pin.startswith('[[plugin_trust.allow]]\ndistribution = "hive-test-plugins"\nversion = "1.0.0"\n')
    log = hive_env / "rec.jsonl"
    start_with("[plugin_trust]\n" + recorder_table(log) + pin)
    await wait_until(lambda: any(r["what"] == "init" for r in records(log)), timeout=30, what="init")
    assert _state("recorder")["state"] == "running"


@pytest.mark.parametrize(("edit", "why"), [
    (lambda pin: pin.replace('sha256 = "', 'sha256 = "0'), "do not match the pinned sha256 (they hash to "),
    (lambda pin: pin.replace('version = "1.0.0"', 'version = "0.9.0"'),
     "hive-test-plugins 1.0.0 is installed, the allowlist pins 0.9.0"),
    (lambda pin: pin.replace('"hive-test-plugins"', '"someone-else"'), "hive-test-plugins is not in the allowlist"),
])
async def test_a_plugin_that_does_not_match_is_refused(start_with: StartWith, hive_env: Path, edit, why) -> None:  # type: ignore[no-untyped-def]
    log = hive_env / "rec.jsonl"
    start_with("[plugin_trust]\n" + recorder_table(log) + edit(_pin()))
    # The socket answers before the plugins start: wait for the outcome.
    state = await wait_until(lambda: (s := _state("recorder"))["state"] == "failed" and s, timeout=30,
                             what="the plugin to be refused")
    assert str(state["last_error"]).startswith("[plugins.recorder]: refused by [plugin_trust]: ")
    assert why in str(state["last_error"])
    assert "`hive plugins pin recorder`" in str(state["last_error"])
    assert records(log) == []  # never initialised
    assert run_cli("ping").returncode == 0
