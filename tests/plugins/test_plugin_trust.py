"""[plugin_trust]: a plugin whose distribution, version and installed files match an
allowlist entry runs; any other is refused with a message saying what differs, and
the daemon starts anyway (its services must be supervised)."""

from __future__ import annotations

import importlib.util
import json
import marshal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from hive.entry_points import entry_points
from hive.plugin_trust import pin_of
from tests.plugins.conftest import PACKAGE, StartWith, recorder_table, records
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


async def test_a_planted_bytecode_cache_is_refused(start_with: StartWith, hive_env: Path, tmp_path: Path) -> None:
    # A copy of the plugin package of its own (the one the other tests use stays clean).
    site = tmp_path / "site"
    with anyio.fail_after(300):
        await anyio.run_process([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                 str(site), str(PACKAGE)])
    entry = next(e for e in entry_points("hive.core_plugins", path=[str(site)]) if e.name == "recorder")
    pin = pin_of(entry).toml()
    # Tampered code compiled into the cache, its header copied from the source's stat:
    # the import system would run it instead of the pinned source.
    source = site / "hive_test_plugins" / "__init__.py"
    tampered = source.read_text().replace('self._write(what="init"', 'self._write(what="tampered"')
    stat = source.stat()
    cache = Path(importlib.util.cache_from_source(str(source)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
                      + (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                      + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")
                      + marshal.dumps(compile(tampered, str(source), "exec")))
    assert pin_of(entry).toml() == pin  # the files the pin covers are unchanged
    log = hive_env / "rec.jsonl"
    start_with("[plugin_trust]\n" + recorder_table(log) + pin, env={"PYTHONPATH": str(site)})
    state = await wait_until(lambda: (s := _state("recorder"))["state"] == "failed" and s, timeout=30,
                             what="the plugin to be refused")
    assert f"refused by [plugin_trust]: {cache} is not compiled from {source}" in str(state["last_error"])
    assert records(log) == []  # the tampered code never ran


def test_the_pin_of_an_editable_install_covers_its_sources(tmp_path: Path) -> None:
    import shutil

    source_tree = tmp_path / "src"
    shutil.copytree(PACKAGE, source_tree)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(source_tree),
                    "--target", str(site)], check=True, capture_output=True, timeout=300)
    entry = next(e for e in entry_points("hive.core_plugins", path=[str(site)]) if e.name == "recorder")
    before = pin_of(entry).sha256
    module = source_tree / "hive_test_plugins" / "__init__.py"
    module.write_text(module.read_text() + "\nTAMPERED = True\n")
    assert pin_of(entry).sha256 != before  # the edited source is what would run


def test_a_cache_planted_after_a_good_check_is_still_refused(tmp_path: Path) -> None:
    import compileall

    from hive.plugin_trust import bytecode_problems

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(PACKAGE)], check=True, capture_output=True, timeout=300)
    entry = next(e for e in entry_points("hive.core_plugins", path=[str(site)]) if e.name == "recorder")
    source = site / "hive_test_plugins" / "__init__.py"
    assert compileall.compile_file(str(source), quiet=1)  # the genuine cache, as an import writes it
    assert bytecode_problems(entry) == [] and bytecode_problems(entry) == []  # the second from what it learnt
    cache = Path(importlib.util.cache_from_source(str(source)))
    header = cache.read_bytes()[:16]  # the source's mtime and size: the import system would load it
    cache.write_bytes(header + marshal.dumps(compile(source.read_text() + "\nTAMPERED = 1\n", str(source), "exec")))
    assert bytecode_problems(entry) == [f"{cache} is not compiled from {source}"]
