"""What every section builder shares: the file being built (its decoder, issue sink, root,
``defaults`` and key positions), path checks, template checks and ``defaults`` merging."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from .._decode import Decoder, describe, parse_port
from .._issues import IssueSink, KeyPath
from .._model import ServiceConfig
from .._templates import check_runtime_templates, is_exact_port_reference

__all__ = ["IDENTIFIER_RE", "BuilderBase", "TemplateScope", "path_problem", "resolve_path"]

V = TypeVar("V")

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_path(root: str, value: str) -> str:
    """A relative path is joined to the project root; an absolute one is kept."""
    return os.path.normpath(os.path.join(root, value))


# The longest path the kernel takes (PATH_MAX less its NUL), and the longest name in one.
PATH_MAX = 4095
NAME_MAX = 255


def path_problem(path: str) -> str | None:
    """Why the kernel would refuse ``path`` (ENAMETOOLONG at start, not now), or None."""
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > PATH_MAX:
        return f"path is too long ({len(encoded)} bytes; at most {PATH_MAX})"
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"a name in the path is too long ({len(longest)} bytes; at most {NAME_MAX} per name)"
    return None


def _copy_subtree(table: dict[KeyPath, V], source: KeyPath, target: KeyPath) -> None:
    depth = len(source)
    for key_path, value in list(table.items()):
        if key_path[:depth] == source:
            table[(*target, *key_path[depth:])] = value


class TemplateScope:
    """What `{{runtime.port.X}}` / `{{uses.A.port.X}}` may refer to inside one service."""

    def __init__(self, port_names: list[str] | None, aliases: set[str]) -> None:
        self.port_names = port_names  # None: unknown (invalid rollout), so not checked
        self.aliases = aliases


class BuilderBase:
    """The state of one build. The section builders (the mixins ``Builder`` is made of) keep
    no state of their own: they read and write these attributes only."""

    decoder: Decoder
    sink: IssueSink
    root: str  # the project's root: relative paths are joined to it
    source: str  # the name services are tagged with (ServiceConfig.source)
    defaults: Mapping[str, dict[str, Any]]  # by plugin id (empty for API input)
    # Each key's line and each scalar's text as written, for errors (``defaults`` merged into a
    # block lend theirs to the keys they fill).
    lines: dict[KeyPath, int]
    scalar_text: dict[KeyPath, str]
    # Every service that built without errors, for cross-service checks on a broken file.
    built_services: dict[str, ServiceConfig]
    # Services with errors, holding only the parts that decoded (for those checks).
    sketches: dict[str, ServiceConfig]
    # A script shell missing from `defaults` is reported once, not once per service.
    _default_shell_reported: bool

    def __init__(
        self,
        decoder: Decoder,
        *,
        root: str,
        source: str,
        defaults: Mapping[str, dict[str, Any]] | None = None,
        lines: dict[KeyPath, int] | None = None,
        scalar_text: dict[KeyPath, str] | None = None,
    ) -> None:
        self.decoder = decoder
        self.sink = decoder.sink
        self.root = root
        self.source = source
        self.defaults = defaults or {}
        self.lines = lines if lines is not None else {}
        self.scalar_text = scalar_text if scalar_text is not None else {}
        self.built_services = {}
        self.sketches = {}
        self._default_shell_reported = False

    def _resolve(self, base: str, value: str, path: KeyPath) -> str:
        """``resolve_path``, with an error at ``path`` for a path no start could use."""
        resolved = resolve_path(base, value)
        problem = path_problem(resolved)
        if problem is not None:
            self.sink.error(path, problem)
        return resolved

    def _error_count(self) -> int:
        return len(self.sink.errors)

    def _expect_mapping(self, value: Any, path: KeyPath, what: str = "a mapping") -> bool:
        if isinstance(value, dict):
            return True
        self.sink.error(path, f"expected {what}, got {describe(value)}")
        return False

    def _one_or_many(self, value: Any, path: KeyPath, what: str) -> list[tuple[Any, KeyPath]] | None:
        """A mapping, or a list of them, as (entry, its path) pairs; None after an error."""
        if isinstance(value, dict):
            return [(value, path)]
        if isinstance(value, list):
            return [(item, (*path, index)) for index, item in enumerate(value)]
        self.sink.error(path, f"expected {what} mapping or a list of them, got {describe(value)}")
        return None

    def _check_templates(self, value: Any, path: KeyPath, scope: TemplateScope | None) -> None:
        """Runtime templates in every string leaf must name a known port / uses alias."""
        if scope is None:
            return
        if isinstance(value, str):
            errors, warnings = check_runtime_templates(
                value, port_names=scope.port_names, aliases=scope.aliases
            )
            for message in errors:
                self.sink.error(path, message)
            for message in warnings:
                self.sink.warning(path, message)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._check_templates(item, (*path, key), scope)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._check_templates(item, (*path, index), scope)

    def _check_port_reference(
        self, value: str, path: KeyPath, scope: TemplateScope | None
    ) -> None:
        """Health and proxy ports: digits, or exactly `{{runtime.port.NAME}}`."""
        if value.isdigit() and value.isascii():
            try:
                parse_port(value)
            except ValueError as exc:
                self.sink.error(path, str(exc))
            return
        name = is_exact_port_reference(value)
        if name is None:
            self.sink.error(
                path,
                f"port must be digits or exactly '{{{{runtime.port.NAME}}}}', got {value!r}",
            )
            return
        self._check_templates(value, path, scope)

    def _apply_defaults(
        self, plugin_id: str, block: dict[str, Any], path: KeyPath
    ) -> dict[str, Any]:
        base = self.defaults.get(plugin_id)
        if not base:
            return block
        return self._merge(base, block, ("defaults", plugin_id), path)

    def _merge(
        self, base: dict[str, Any], override: dict[str, Any], base_path: KeyPath, path: KeyPath
    ) -> dict[str, Any]:
        """Deep-merge of mappings, the service value wins; scalars and lists are replaced whole.
        Keys taken from `defaults` keep their lines there, so errors point at them."""
        merged = dict(override)
        for key, base_value in base.items():
            if key not in override:
                merged[key] = base_value
                self._copy_positions((*base_path, key), (*path, key))
            elif isinstance(base_value, dict) and isinstance(override[key], dict):
                merged[key] = self._merge(
                    base_value, override[key], (*base_path, key), (*path, key)
                )
        return merged

    def _copy_positions(self, source: KeyPath, target: KeyPath) -> None:
        _copy_subtree(self.lines, source, target)
        _copy_subtree(self.scalar_text, source, target)
