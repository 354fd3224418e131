"""What a service exposes to others (``expose``) and what it takes from them (``uses``)."""

from __future__ import annotations

from typing import Any

from .._decode import describe
from .._issues import KeyPath, format_path
from .._model import ExposeSpec, UsesSpec
from ._common import IDENTIFIER_RE, BuilderBase, TemplateScope

__all__ = ["Exposure"]


class Exposure(BuilderBase):
    """``expose:`` and ``uses:`` of a service. State: decoder, sink."""

    def expose(self, value: Any, path: KeyPath, scope: TemplateScope) -> ExposeSpec | None:
        if not self._expect_mapping(value, path):
            return None
        start = self._error_count()
        if not value.get("name"):
            self.sink.error((*path, "name"), "Expose name is required")
        if not value.get("vars"):
            self.sink.error((*path, "vars"), "At least one variable is required")
        if self._error_count() > start:
            self.decoder.warn_unknown_keys(value, ("name", "secret", "vars"), path)
            return None
        spec = self.decoder.decode(value, ExposeSpec, path)
        if spec is None:
            return None
        self._check_templates(spec.vars, (*path, "vars"), scope)
        return None if self._error_count() > start else spec

    def uses(self, value: Any, path: KeyPath) -> list[UsesSpec] | None:
        if value is None:
            self.sink.error(path, "expected a list, got null")
            return None
        if not isinstance(value, list):
            self.sink.error(path, f"expected a list, got {describe(value)}")
            return None
        start = self._error_count()
        result: list[UsesSpec] = []
        aliases: dict[str, int] = {}
        for index, item in enumerate(value):
            item_path = (*path, index)
            if isinstance(item, dict) and not item.get("name"):
                self.sink.error((*item_path, "name"), "Uses name is required")
                continue
            spec = self.decoder.decode(item, UsesSpec, item_path)
            if spec is None:
                continue
            if spec.as_ is not None and IDENTIFIER_RE.match(spec.as_) is None:
                self.sink.error(
                    (*item_path, "as"),
                    f"alias {spec.as_!r} must be an identifier (letters, digits, '_')",
                )
                continue
            alias = spec.alias()
            if alias is not None:
                if alias in aliases:
                    self.sink.error(
                        item_path,
                        f"alias '{alias}' is already used by {format_path((*path, aliases[alias]))}",
                    )
                    continue
                aliases[alias] = index
            result.append(spec)
        return None if self._error_count() > start else result
