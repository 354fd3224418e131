"""What `hive up --watch` watches, and which changes it ignores (no watchfiles import here:
`hive up` without --watch does not load it).

A service with a `watch:` section in hive.yaml gets a plan of its own (its paths, ignore
globs, debounce, and whether it rebuilds). The others share one plan, the project root
(or --watch-path), when no service has a section or when --watch-path is given: as with
compose, once a project says what to watch, a service it says nothing of is not watched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hive_client import ServiceInfo

from ._common import fail

__all__ = ["DEFAULT_DEBOUNCE_MS", "MAX_BATCH_MS", "SHOWN_PATHS", "WatchPlan", "plans_for"]

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
    rebuild: bool = False  # run each service's build before its restart (watch action: rebuild)

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


def plans_for(project: Path, source: str, targets: Sequence[ServiceInfo], cli_paths: tuple[Path, ...],
              cli_ignore: tuple[str, ...], cli_debounce_ms: int) -> list[WatchPlan]:
    """The plans for the services ``hive up`` brought up from ``project`` (its directory or
    its file); ``--ignore`` adds to every plan."""
    root = project if project.is_dir() else project.parent
    from hive.config import ConfigError, WatchSpec, load_project

    specs: dict[str, WatchSpec] = {}
    try:
        config = load_project(project, source_name=source).config
    except (ConfigError, OSError):
        config = None  # the daemon has said what is wrong with the file; watch as without keys
    if config is not None:
        specs = {name: service.watch for name, service in config.services.items() if service.watch is not None}
    plans: list[WatchPlan] = []
    for name, spec in sorted(specs.items()):
        fqns = tuple(info.fqn for info in targets if info.name == name)
        if not fqns:
            continue  # not brought up by this `hive up` (other services were named)
        missing = [path for path in spec.paths if not Path(path).exists()]
        if missing:
            fail(f"{source}:{name}: watch path {missing[0]} does not exist",
                 hint=f"create it, or change services.{name}.watch.paths in hive.yaml")
        debounce = round(spec.debounce * 1000) if spec.debounce is not None else cli_debounce_ms
        plans.append(WatchPlan(
            root=root, paths=tuple(Path(p) for p in spec.paths), ignore=(*spec.ignore, *cli_ignore),
            debounce_ms=max(debounce, 1), services=fqns, rebuild=spec.action == "rebuild",
        ))
    if not specs or cli_paths:
        others = tuple(info.fqn for info in targets if info.name not in specs)
        if others or not plans:
            plans.append(WatchPlan(root=root, paths=cli_paths or (root,), ignore=cli_ignore,
                                   debounce_ms=cli_debounce_ms, services=others))
    return plans
