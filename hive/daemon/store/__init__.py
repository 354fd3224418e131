"""The state store: what must survive the daemon, in ``$HIVE_HOME/state.db``.

- :mod:`.schema`: the tables and their migrations (forward only).
- :mod:`.database`: :class:`StateStore`, the connection: checks, migrations,
  transactions; :class:`StoreError` when the database cannot be used.
- :mod:`.repository`: every statement on the tables, behind typed rows and methods.
- :mod:`.writer`: :class:`StateWriter`, write-behind for the supervisor's frequent writes.
"""

from .database import StateStore, StoreError
from .repository import (
    ProcessRecord,
    ServiceRow,
    SourceRow,
    StateRepository,
    Write,
    desired_state_write,
    forget_process_write,
    forget_service_write,
    process_record_write,
)
from .schema import MIGRATIONS, SCHEMA_VERSION
from .writer import StateWriter

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ProcessRecord",
    "ServiceRow",
    "SourceRow",
    "StateRepository",
    "StateStore",
    "StateWriter",
    "StoreError",
    "Write",
    "desired_state_write",
    "forget_process_write",
    "forget_service_write",
    "process_record_write",
]
