"""The ``shell`` of a script block, checked where Hive runs: a shell named in ``defaults``
that is not installed is a warning and is dropped (Hive's original never applies defaults,
so its services ran without it); one a service names itself is an error. Both are reported
by ``hive config validate`` with file, line and key."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli, write_project

from .conftest import LoadText

MISSING = "hive-test-no-such-shell"

DEFAULT_SHELL = f"""\
version: "1"
defaults:
  hive.runner.script:
    shell: {MISSING}
services:
  web:
    runner: {{type: script, script: {{run: "echo web; exec sleep 100"}}}}
  worker:
    runner: {{type: script, script: {{run: "exec sleep 100"}}}}
"""


def test_a_missing_default_shell_is_a_warning_and_dropped(load_text: LoadText) -> None:
    project = load_text(DEFAULT_SHELL)
    for name in ("web", "worker"):
        script = project.config.services[name].runner.script
        assert script is not None and script.shell is None
    # Once, at the defaults key, not once per service.
    assert [str(w) for w in project.warnings] == [
        f"hive.yaml:4: warning: defaults.hive.runner.script.shell: shell '{MISSING}' not found "
        "on PATH: script services run their commands without it (directly, or under $SHELL or "
        "/bin/sh), as Hive's original does; install it to use it"
    ]


def test_an_installed_default_shell_is_applied(load_text: LoadText) -> None:
    project = load_text(DEFAULT_SHELL.replace(MISSING, "sh"))
    script = project.config.services["web"].runner.script
    assert script is not None and script.shell == "sh"
    assert project.warnings == []


def test_validate_reports_a_missing_shell_with_file_line_and_key(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", f"""\
        version: "1"
        defaults:
          hive.runner.script: {{shell: {MISSING}}}
        services:
          own:
            runner:
              type: script
              script: {{run: "echo hi", shell: /no/such/zsh}}
            hooks:
              pre-up:
                - runner: {{type: script, script: {{run: "echo hook", shell: {MISSING}}}}}
          plain:
            runner: {{type: script, script: {{run: "echo plain"}}}}
        """)
    result = run_cli("--json", "config", "validate", str(root))
    assert result.returncode != 0
    issues = [(i["severity"], i["file"], i["line"], i["path"], i["message"])
              for i in json.loads(result.stdout)["issues"]]
    assert issues == [
        ("warning", "hive.yaml", 3, "defaults.hive.runner.script.shell",
         f"shell '{MISSING}' not found on PATH: script services run their commands without it "
         "(directly, or under $SHELL or /bin/sh), as Hive's original does; install it to use it"),
        ("error", "hive.yaml", 8, "services.own.runner.script.shell",
         "shell '/no/such/zsh' not found (no such file: /no/such/zsh): install it, or leave "
         "'shell' out (commands then run directly, or under $SHELL or /bin/sh)"),
        ("error", "hive.yaml", 11, "services.own.hooks.pre-up[0].runner.script.shell",
         f"shell '{MISSING}' not found on PATH: install it, or leave 'shell' out (commands then "
         "run directly, or under $SHELL or /bin/sh)"),
    ]
    human = run_cli("config", "validate", str(root))
    assert "hive.yaml:8: services.own.runner.script.shell: shell '/no/such/zsh' not found" in human.stdout
    assert "Traceback" not in human.stdout + human.stderr
