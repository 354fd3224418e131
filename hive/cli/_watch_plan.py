"""What `hive up --watch` watches, and which changes it ignores (no watchfiles import here:
`hive up` without --watch does not load it)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["DEFAULT_DEBOUNCE_MS", "MAX_BATCH_MS", "SHOWN_PATHS", "WatchPlan"]

DEFAULT_DEBOUNCE_MS = 300
MAX_BATCH_MS = 5_000  # a batch is cut here even if changes keep coming (a long build)
SHOWN_PATHS = 3  # changed paths named in a report line; the rest are counted


@dataclass(frozen=True)
class WatchPlan:
    """What to watch and what to restart when it changes."""

    root: Path  # the project root: paths and globs are relative to it
    paths: tuple[Path, ...]
    ignore: tuple[str, ...]
    debounce_ms: int
    services: tuple[str, ...]  # fqns

    def ignored(self, path: str) -> bool:
        """A glob with a ``/`` matches the path from the root (``tmp/*``, ``build/**``);
        one without matches any part of it (``*.log``, ``node_modules``), as in .gitignore."""
        try:
            relative = PurePosixPath(Path(path).relative_to(self.root).as_posix())
        except ValueError:
            relative = PurePosixPath(path)
        text = str(relative)
        for glob in self.ignore:
            pattern = glob.strip("/")
            if "/" in pattern:
                if fnmatch.fnmatchcase(text, pattern) or fnmatch.fnmatchcase(text, pattern + "/*"):
                    return True
            elif any(fnmatch.fnmatchcase(part, pattern) for part in relative.parts):
                return True
        return False

    def relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return path
