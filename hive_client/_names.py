"""Names and FQNs: ``source:service`` with an optional ``#instance``."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import NamedTuple

__all__ = ["NAME_PATTERN", "Fqn", "fqn_matches", "parse_fqn", "validate_name"]

NAME_PATTERN = r"[a-z][a-z0-9_-]*"
_NAME_RE = re.compile(NAME_PATTERN)
_MAX_NAME = 128


class Fqn(NamedTuple):
    source: str
    service: str
    instance: int | None = None

    def __str__(self) -> str:
        base = f"{self.source}:{self.service}"
        return base if self.instance is None else f"{base}#{self.instance}"


def validate_name(name: str, what: str = "name") -> str | None:
    """Why ``name`` is not a valid source or service name, or None when it is."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > _MAX_NAME:
        return f"{what} is longer than {_MAX_NAME} characters"
    if not _NAME_RE.fullmatch(name):
        if not ("a" <= name[0] <= "z"):
            return f"{what} {name!r} must start with a lowercase letter"
        return f"{what} {name!r} must contain only lowercase letters, digits, '-' and '_'"
    return None


def _quoted(text: str, limit: int = 100) -> str:
    """``repr(text)``, cut for a message: an error must not echo 100 kB of input back."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def parse_fqn(fqn: str) -> Fqn:
    """Split ``source:service[#N]`` at the first ``:``; ValueError says what is wrong."""
    source, sep, rest = fqn.partition(":")
    if not sep:
        raise ValueError(f"{_quoted(fqn)} is not an FQN: expected 'source:service'")
    service, hash_, instance_text = rest.partition("#")
    for part, what in ((source, "source name"), (service, "service name")):
        problem = validate_name(part, what)
        if problem:
            raise ValueError(f"invalid FQN {_quoted(fqn)}: {problem}")
    instance: int | None = None
    if hash_:
        # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and "٣".
        if not (instance_text.isascii() and instance_text.isdigit()) or len(instance_text) > 6:
            raise ValueError(f"invalid FQN {_quoted(fqn)}: instance must be a number after '#'")
        instance = int(instance_text)
    return Fqn(source, service, instance)


def fqn_matches(pattern: str | None, fqn: str) -> bool:
    """Match an FQN against ``web``, ``proj:*``, ``*:web``, ``proj:web#2`` and the like.

    A pattern without ``:`` names a service in any source. A pattern without ``#``
    matches every instance of the services it names.
    """
    if not pattern or pattern == "*":
        return True
    if ":" not in pattern:
        pattern = "*:" + pattern
    if "#" not in pattern:
        fqn = fqn.partition("#")[0]
    return fnmatchcase(fqn, pattern)
