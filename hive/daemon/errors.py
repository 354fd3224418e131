"""Errors a handler raises to answer ``error{code, message}``.

Handlers raise :class:`RequestError`; the dispatcher turns it into the response. Any
other exception is a bug: it is logged with its traceback in the daemon's log and the
caller gets ``INTERNAL`` with one line, never the traceback.
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
