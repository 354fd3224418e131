"""The sources family (filled in by the sources work)."""

from __future__ import annotations

from typing import Any

from hive_client import ErrorCode

from ..dispatch import RequestContext
from ..errors import RequestError


async def _unsupported(ctx: RequestContext, request: Any) -> Any:
    raise RequestError(ErrorCode.UNSUPPORTED, f"{type(request).__name__} is not available yet")


list_sources = add_source = remove_source = reload_source = _unsupported
enable_source = disable_source = start_source = stop_source = _unsupported
