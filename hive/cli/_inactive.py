"""What ``hive up`` warns about: the parts of a project that are parsed but not active yet.

One line per service that uses any (and one for the project's own settings), on stderr, so
the table and ``--json`` output stay as they are. The file is read again here only when its
text names such a part: a plain project pays for no second parse.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["inactive_warnings", "warn_inactive"]

# Words without which a file uses none of those parts.
_MARKERS = ("blue-green", "observability")


def inactive_warnings(root: Path, source: str, services: list[str]) -> list[str]:
    """The warnings for the project at ``root`` (only ``services``, when named)."""
    from .service_cmds import CONFIG_FILES

    texts = []
    for name in CONFIG_FILES:
        try:
            texts.append((root / name).read_text(encoding="utf-8", errors="replace"))
            break
        except OSError:
            continue
    if not any(marker in text for text in texts for marker in _MARKERS):
        return []
    from hive.config import BLUE_GREEN_RUNNERS, ConfigError, load_project

    try:
        config = load_project(root, source_name=source).config
    except (ConfigError, OSError):
        return []  # the daemon has said what is wrong with it
    lines = []
    project = []
    if config.observability is not None:
        project.append("observability")
    if project:
        lines.append(f"warning: {source}: not active yet, kept for later: {', '.join(project)}")
    for name, service in config.services.items():
        if services and name not in services:
            continue
        features = []
        if service.rollout is not None and service.rollout.type == "blue-green" \
                and service.runner.type not in BLUE_GREEN_RUNNERS:
            features.append(f"blue-green rollout of a {service.runner.type} service (it runs on its blue ports)")
        if features:
            lines.append(f"warning: {source}:{name}: not active yet: {', '.join(features)}")
    return lines


def warn_inactive(root: Path, source: str, services: list[str]) -> None:
    for line in inactive_warnings(root, source, services):
        sys.stderr.write(line + "\n")
