"""Errors a handler raises to answer ``error{code, message}``, and the daemon's other
errors, drawn as a tree.

Handlers raise :class:`RequestError`; the server turns it into the response. The store
and the runners know nothing of requests: their errors are their own, and the boundary
where a request's work meets them decides what the caller is told (the server answers a
:class:`~hive.daemon.store.StoreError` ``error{STORAGE, message}``; the supervisor turns
a runner's error into an instance's state and last error). Any other exception is a
bug: it is logged with its traceback in the daemon's log and the caller gets
``INTERNAL`` with one line, never the traceback.

The daemon's internal exceptions::

    Exception
    ├── RequestError           answered error{code, message} (this module)
    ├── StoreError             state.db cannot be used: STORAGE to a request, or the
    │                          daemon does not start (store.database)
    ├── StartupError           the daemon cannot start; said on stderr (lifecycle)
    ├── AlreadyRunning         another daemon holds the pid lock (pidlock)
    ├── SettingsError          hive.toml refused (settings)
    ├── PluginConfigError      a plugin's settings refused (plugins)
    │   └── PluginRefused      a plugin not trusted
    ├── SqliteSourceError      a SQLite source cannot be read or written (sqlite_source)
    ├── UnknownRunner          no runner of that type (runner_registry)
    ├── RunnerError            a runner cannot do it now (runners.base)
    │   └── StopFailed         some of a batch of stops failed, each with why
    ├── OwnerClosed            a job for a service being removed (supervision.jobs)
    └── IllegalTransition      an input the phase table has no entry for (supervision.machine)
"""

from __future__ import annotations

from collections.abc import Sequence

from hive_client import ErrorCode, InstanceOutcome

__all__ = ["RequestError"]


class RequestError(Exception):
    """``outcomes``: what a start, stop, restart or scale did to each instance, when it
    did not do all it was asked (sent along in the error)."""

    def __init__(self, code: ErrorCode, message: str, outcomes: Sequence[InstanceOutcome] = ()) -> None:
        self.code = code
        self.message = message
        self.outcomes = list(outcomes)
        super().__init__(f"{code}: {message}")

    @classmethod
    def not_found(cls, what: str) -> RequestError:
        return cls(ErrorCode.NOT_FOUND, what)

    @classmethod
    def invalid(cls, message: str) -> RequestError:
        return cls(ErrorCode.INVALID_REQUEST, message)

    @classmethod
    def forbidden(cls, who: str, held: str, what: str, needed: str, *, group_member: bool) -> RequestError:
        """``who`` (with scope ``held``) may not ask ``what``, which needs ``needed``."""
        return cls(ErrorCode.FORBIDDEN, f"{who} has the {held!r} scope; {what} needs {needed!r}"
                   # Only a group member's connection is limited without being a plugin's.
                   + (" (the daemon's owner sets it: daemon.group_scope in config.toml)"
                      if group_member else ""))
