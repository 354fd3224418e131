"""Hive, a local service supervisor. The daemon lives in ``hive.daemon``, the CLI in
``hive.cli``; this package itself stays light so the CLI starts fast."""

from hive_client import __version__

__all__ = ["__version__"]
