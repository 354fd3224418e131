"""Builds the typed model from interpolated plain data, one section at a time, collecting every
error of the file (a bad service does not hide another one's errors).

A runner's block is the runner's business: it is decoded with the ``Config`` of the runner
registered under its type (see ``hive.config._runners``), never with a shape kept here.

The sections are mixins on one ``BuilderBase`` (``_common``), which holds all the state. A
mixin inherits those whose sections it is made of: ``TopLevel`` (``_top``) inherits
``Services`` (``_services``), which inherits ``Hooks``, ``Runners``, ``Rollouts``, ``Proxy``,
``Checks``, ``Lifecycle``, ``Environment`` and ``Exposure``. Runners, rollouts and checks share
``TypedBlocks`` (``_blocks``), the ``{type: X, X: {...}}`` pattern."""

from __future__ import annotations

from ._top import TopLevel

__all__ = ["Builder"]


class Builder(TopLevel):
    """Builds sections of one file. ``defaults`` are keyed by plugin id (empty for API input)."""
