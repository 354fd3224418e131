"""``hive config validate``: check a hive.yaml without the daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import EXIT_FAILURE, CliState, json_option, pass_state


@click.group()
def config() -> None:
    """Work with hive.yaml files."""


@config.command("validate")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@json_option
@pass_state
def validate(state: CliState, path: Path | None) -> None:
    """Check a project's hive.yaml: errors with file, line and key; warnings; what is not active yet."""
    from hive.config import ConfigError, find_project_root, load_project

    target = path or find_project_root(Path.cwd()) or Path.cwd()
    out = state.out
    try:
        project = load_project(target)
    except ConfigError as exc:
        issues = sorted([*exc.issues, *exc.warnings], key=lambda i: (i.file, i.line or 0))
        if state.json_mode:
            out.json({"valid": False, "issues": issues})
        else:
            for issue in issues:
                out.line(str(issue), style="red" if issue.severity == "error" else "yellow")
            errors = sum(1 for i in exc.issues if i.severity == "error")
            out.line(f"{errors} error{'s' if errors != 1 else ''}: the configuration is invalid", style="bold red")
        sys.exit(EXIT_FAILURE)
    if state.json_mode:
        out.json({
            "valid": True,
            "file": str(project.file),
            "services": sorted(project.config.services),
            "warnings": project.warnings,
            "inactive": project.inactive,
        })
        return
    for warning in project.warnings:
        out.line(str(warning), style="yellow")
    for note in project.inactive:
        out.line(f"not active yet: {note}", style="dim")
    count = len(project.config.services)
    out.markup(
        f"[green]valid[/]: {project.file} ({count} service{'s' if count != 1 else ''})",
        f"valid: {project.file} ({count} service{'s' if count != 1 else ''})",
    )
