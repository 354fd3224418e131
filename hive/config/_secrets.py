"""Values a configuration took from an environment (``${env.X}``), and the text that hides them.

What ``${env.X}`` read becomes part of a command, a path or a URL, and from there part of an
error, an event or a health check's message, which clients with the ``read`` scope see. A
:class:`SecretMask` shows each such value as the reference that produced it
(``${env.API_TOKEN}``): the message still says where the value came from, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["MIN_SECRET_LENGTH", "SecretMask", "is_secret"]

# Shorter values ("1", "on", "dev") hold no secret worth the name, and hiding each of their
# occurrences would garble every message (every "1" in a pid).
MIN_SECRET_LENGTH = 4


def is_secret(value: str) -> bool:
    """Whether a value read from an environment is hidden: not when shorter than
    ``MIN_SECRET_LENGTH`` nor a number (a port, a count: hiding 8080 would hide it in every
    pid and port shown)."""
    return len(value) >= MIN_SECRET_LENGTH and not value.isdigit()


class SecretMask:
    """Replaces each known value (``value -> shown as``) wherever it occurs in a text."""

    def __init__(self, shown_as: Mapping[str, str] | None = None) -> None:
        self.shown_as: dict[str, str] = {}
        for value, shown in (shown_as or {}).items():
            # Each line of a multi-line value too (a PEM key): output is cut at newlines.
            for part in (value, *value.splitlines()):
                if is_secret(part):
                    self.shown_as.setdefault(part, shown)
        # Longest first: a value that contains another is replaced whole.
        ordered = sorted(self.shown_as, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    @classmethod
    def union(cls, masks: Iterable[SecretMask]) -> SecretMask:
        merged: dict[str, str] = {}
        for mask in masks:
            merged.update(mask.shown_as)
        return cls(merged)

    def hide(self, text: str) -> str:
        """``text`` with every known value replaced (the same object when none occurs)."""
        pattern = self._pattern
        if pattern is None or pattern.search(text) is None:
            return text
        return pattern.sub(lambda match: self.shown_as[match.group(0)], text)
