"""Every example of docs/hive-yaml.md, as a user would try it: a ```yaml valid block passes
``hive config validate``'s checks with no warning (or exactly the ones its ``# warning:``
comments name), a ```yaml invalid block fails them with the error its ``# error:`` comment
names. A yaml block left unmarked fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hive.config import ConfigError, load_project

DOC = Path(__file__).resolve().parents[2] / "docs" / "hive-yaml.md"
FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


def _blocks() -> list[tuple[int, str, str]]:
    """(line, mark, text) of each fenced block."""
    blocks = []
    lines = DOC.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start, language, mark = index + 1, match.group(1), match.group(2).strip()
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if language == "yaml":
            blocks.append((start, mark, "\n".join(lines[index + 1 : end]) + "\n"))
        index = end + 1
    return blocks


BLOCKS = _blocks()


def test_every_yaml_block_is_marked() -> None:
    assert len(BLOCKS) >= 40
    assert [(line, mark) for line, mark, _ in BLOCKS if mark not in ("valid", "invalid")] == []
    # Each top-level key of the format has at least one valid example.
    valid = "\n".join(text for _, mark, text in BLOCKS if mark == "valid")
    for key in ("version", "registry_url", "defaults", "proxy", "environment", "observability",
                "hooks", "services"):
        assert re.search(rf"^{key}:", valid, re.MULTILINE), key


@pytest.mark.parametrize(("line", "mark", "text"), BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_example(tmp_path: Path, line: int, mark: str, text: str) -> None:
    (tmp_path / "hive.yaml").write_text(text, encoding="utf-8")
    if mark == "valid":
        try:
            project = load_project(tmp_path, environ={})
        except ConfigError as exc:
            pytest.fail(f"docs/hive-yaml.md:{line}: marked valid, but:\n{exc}")
        # No warning (a key the doc misspells would be one), but the one the example names.
        warned = re.findall(r"^# warning: (.+)$", text, re.MULTILINE)
        warnings = [str(w) for w in project.warnings]
        assert len(warnings) == len(warned), f"docs/hive-yaml.md:{line}: {warnings}"
        for text_of_warning, warning in zip(warned, warnings, strict=True):
            assert text_of_warning in warning, f"docs/hive-yaml.md:{line}: {warning}"
        return
    expected = re.search(r"^# error: (.+)$", text, re.MULTILINE)
    assert expected is not None, f"docs/hive-yaml.md:{line}: an invalid example names its error"
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path, environ={})
    assert expected.group(1) in str(caught.value), f"docs/hive-yaml.md:{line}: {caught.value}"
