"""Entry points, read straight from the installed distributions' metadata.

``importlib.metadata`` would do, but it brings the email, zipfile and csv machinery
along (3 MB of resident memory in a daemon that wants to stay small); an entry point
needs only ``entry_points.txt``. Distributions are looked up along ``sys.path`` in order,
and the first distribution of a given name wins, as the import system would.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["EntryPoint", "entry_points"]

_DIST_DIR = re.compile(r"^(?P<name>[^-]+)(-[^-]+)?\.(dist-info|egg-info)$")


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # "module.path:attribute.path"
    group: str
    distribution: str
    metadata_dir: str = ""  # the distribution's .dist-info (or .egg-info) directory

    def load(self) -> Any:
        module_name, _, attribute = self.value.partition(":")
        target: Any = importlib.import_module(module_name.strip())
        for part in filter(None, attribute.strip().split(".")):
            target = getattr(target, part)
        return target


def _parse(text: str, distribution: str, metadata_dir: str = "") -> Iterable[EntryPoint]:
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        name, sep, value = line.partition("=")
        if group is None or not sep:
            continue
        # "module:attr [extra1,extra2]": the extras say nothing about where it is.
        value = value.split("[", 1)[0].strip()
        yield EntryPoint(name.strip(), value, group, distribution, metadata_dir)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entry_points(group: str, path: Iterable[str] | None = None) -> list[EntryPoint]:
    """Every entry point of ``group``, the first distribution of each name winning."""
    seen: set[str] = set()
    found: dict[str, EntryPoint] = {}
    for directory in path if path is not None else sys.path:
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        for entry in sorted(names):
            match = _DIST_DIR.match(entry)
            if match is None:
                continue
            distribution = _normalize(match.group("name"))
            if distribution in seen:
                continue
            seen.add(distribution)
            try:
                with open(os.path.join(directory, entry, "entry_points.txt"), encoding="utf-8") as file:
                    text = file.read()
            except OSError:
                continue
            for point in _parse(text, distribution, os.path.join(directory, entry)):
                if point.group == group:
                    found.setdefault(point.name, point)
    return [found[name] for name in sorted(found)]
