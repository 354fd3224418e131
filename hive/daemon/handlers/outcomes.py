"""The answer of a start, stop, restart or scale, from what it did to each instance.

All done: ``ok`` with a message and the outcomes. Any failed: ``SERVICE_FAILED``
naming each instance that failed and why. None failed but some not done yet (a stop
its engine must carry out, a start that waits for one): ``CONFLICT``, saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

from hive_client import ErrorCode, InstanceOutcome
from hive_client.protocol import Ok

from ..errors import RequestError

__all__ = ["answer", "problems"]


def problems(outcomes: Sequence[InstanceOutcome]) -> list[str]:
    """``fqn: why`` (its state when no reason is known) for each instance not done."""
    return [f"{o.fqn}: {o.reason or o.state}" for o in outcomes if o.result != "done"]


def answer(done: str, outcomes: Sequence[InstanceOutcome], *, not_done: str) -> Ok:
    """``Ok(done)`` when every instance is as asked; else the error, ``not_done`` first."""
    failed = [o for o in outcomes if o.result == "failed"]
    if not failed and all(o.result == "done" for o in outcomes):
        return Ok(message=done, outcomes=list(outcomes))
    code = ErrorCode.SERVICE_FAILED if failed else ErrorCode.CONFLICT
    raise RequestError(code, f"{not_done}: " + "; ".join(problems(outcomes)), outcomes)
