"""Hive, a local service supervisor. The daemon lives in ``hive.daemon``, the CLI in
``hive.cli``; this package itself stays light so the CLI starts fast: ``__version__``
comes from ``hive_client`` (msgspec and the protocol) only when asked for."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from hive_client import __version__

        return __version__
    raise AttributeError(f"module 'hive' has no attribute {name!r}")
