"""Issues (errors and warnings) with file, line and key path, and the exceptions that carry them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

PathKey = str | int
KeyPath = tuple[PathKey, ...]


class ConfigIssue(msgspec.Struct, frozen=True):
    """One finding about a config file. ``line`` is 1-based; ``path`` is dotted (``services.web.restart``)."""

    severity: Literal["error", "warning"]
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        kind = "warning: " if self.severity == "warning" else ""
        subject = f"{self.path}: " if self.path else ""
        text = f"{where}: {kind}{subject}{self.message}"
        if text.isprintable():
            return text
        # Keys and values come from the file: a control character (\r, an escape sequence)
        # would break the one-line message or drive the user's terminal. Show it escaped.
        return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _issue_order(issue: ConfigIssue) -> tuple[int, int]:
    # Issues without a line (API input) go last; the sort is stable, so ties keep check order.
    line = issue.line if issue.line is not None else 1 << 30
    return (line, 0 if issue.severity == "error" else 1)


def sort_issues(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=_issue_order)


class ConfigError(Exception):
    """An invalid config. ``issues`` holds the errors (sorted by line), ``warnings`` the warnings."""

    def __init__(
        self, issues: list[ConfigIssue], warnings: list[ConfigIssue] | None = None
    ) -> None:
        self.issues: list[ConfigIssue] = sort_issues(issues)
        self.warnings: list[ConfigIssue] = sort_issues(warnings or [])
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class RuntimeTemplateError(ValueError):
    """A ``{{runtime.port.X}}`` / ``{{uses.A.port.X}}`` template that cannot be resolved."""


def format_path(path: KeyPath) -> str:
    """``("services", "web", "proxy", 0, "path")`` -> ``services.web.proxy[0].path``."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text += f".{key}" if text else key
    return text


class IssueSink:
    """Collects issues for one file; maps key paths to lines through the YAML line table."""

    def __init__(self, file: str, lines: Mapping[KeyPath, int] | None = None) -> None:
        self.file = file
        self.lines: Mapping[KeyPath, int] = lines or {}
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    def line_of(self, path: KeyPath) -> int | None:
        # The longest prefix that exists: a missing key points at its parent.
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def error(self, path: KeyPath, message: str, *, line_path: KeyPath | None = None) -> None:
        line = self.line_of(line_path if line_path is not None else path)
        self.errors.append(ConfigIssue("error", self.file, line, format_path(path), message))

    def warning(self, path: KeyPath, message: str, *, line_path: KeyPath | None = None) -> None:
        line = self.line_of(line_path if line_path is not None else path)
        self.warnings.append(ConfigIssue("warning", self.file, line, format_path(path), message))

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConfigError(self.errors, self.warnings)
