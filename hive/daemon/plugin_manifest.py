"""What the daemon reads from a plugin's manifest (the class attributes ``api_version``,
``capabilities`` and ``depends_on`` of :class:`hive.plugin.CorePlugin`), and the module
bookkeeping that lets ``hive plugins restart`` run the plugin's new code.

- :func:`check_api_version`: a plugin written for an API this daemon does not speak is
  refused (it alone shows ``failed``), never run against the wrong API.
- :func:`shutdown_waves`: the order plugins stop in, dependents before what they depend on
  (init runs in the opposite order: each plugin waits for its dependencies' start).
- :func:`forget_modules`: drop the plugin's modules from ``sys.modules`` so the next
  import reads its files again.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hive.entry_points import EntryPoint
from hive.plugin import SUPPORTED_API_VERSIONS

__all__ = ["check_api_version", "forget_modules", "shutdown_waves"]

# Never dropped from sys.modules: the daemon itself runs on them.
_DAEMON_PACKAGES = frozenset({"hive", "hive_client", "runners"})


def check_api_version(name: str, plugin_class: type[Any]) -> str | None:
    """Why the daemon refuses the plugin's ``api_version``, or None if it supports it."""
    wanted = getattr(plugin_class, "api_version", None)
    if isinstance(wanted, int) and wanted in SUPPORTED_API_VERSIONS:
        return None
    supported = ", ".join(str(v) for v in sorted(SUPPORTED_API_VERSIONS))
    return (f"[plugins.{name}]: refused: the plugin is written for plugin API {wanted!r}, this daemon "
            f"supports {supported}; install a version of the plugin for API {supported}, or a Hive that "
            f"supports API {wanted!r}")


def shutdown_waves(depends_on: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The plugins in groups to stop one after the other: a plugin comes in a group
    before every plugin it depends on (a cycle is stopped together, last)."""
    remaining = dict(depends_on)
    waves: list[list[str]] = []
    while remaining:
        needed = {dep for name, deps in remaining.items() for dep in deps if dep != name}
        wave = sorted(name for name in remaining if name not in needed) or sorted(remaining)
        waves.append(wave)
        for name in wave:
            del remaining[name]
    return waves


def forget_modules(entry: EntryPoint) -> list[str]:
    """Drop the modules of the plugin's package from ``sys.modules`` (the entry point's
    top-level package and everything under it), so loading the entry point again imports
    the files as they are now. Classes already created (a running plugin of the same
    package) keep the code they were built from. Returns the names dropped."""
    module = entry.value.split(":", 1)[0].strip()
    top = module.split(".", 1)[0]
    if top in _DAEMON_PACKAGES:
        top = module  # a plugin inside the daemon's own packages: only its own module
    dropped = [name for name in list(sys.modules) if name == top or name.startswith(top + ".")]
    for name in dropped:
        del sys.modules[name]
    importlib.invalidate_caches()
    return dropped

