"""The services family (filled in by the supervision work)."""

from __future__ import annotations

from .sources import _unsupported

list_services = get_service_status = start_service = stop_service = _unsupported
restart_service = create_service = update_service = delete_service = _unsupported
list_exposed = _unsupported
