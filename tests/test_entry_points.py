"""Our light entry-point reader agrees with importlib.metadata."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from hive.entry_points import entry_points


def test_agrees_with_importlib_metadata() -> None:
    for group in ("console_scripts", "hive.runners", "pytest11"):
        ours = {(p.name, p.value) for p in entry_points(group)}
        reference = {(p.name, p.value) for p in importlib.metadata.entry_points(group=group)}
        assert ours == reference, group


def test_loads_the_builtin_script_runner() -> None:
    from runners.script import ScriptRunner

    (point,) = [p for p in entry_points("hive.runners") if p.name == "script"]
    assert point.load() is ScriptRunner


def test_first_distribution_on_the_path_wins(tmp_path: Path) -> None:
    for directory, target in (("a", "first:thing"), ("b", "second:thing")):
        dist = tmp_path / directory / "demo_pkg-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "entry_points.txt").write_text(
            f"# a comment\n[hive.runners]\ndemo = {target} [extra]\n\n[other]\nx = y:z\n"
        )
    found = entry_points("hive.runners", path=[str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(p.name, p.value, p.distribution) for p in found] == [("demo", "first:thing", "demo-pkg")]
