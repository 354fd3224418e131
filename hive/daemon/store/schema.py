"""The schema of ``state.db``: its migrations, forward only, one per version.

What is saved is what must survive the daemon: the sources registry (and each source's
owner), the desired state of every service, restart counters, and the processes the
daemon started (so a new daemon can adopt them). Everything else is runtime-only and lives in memory. The
statements on these tables are all in :mod:`.repository`.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

# Each entry takes the schema from version N-1 to N (N = its position, from 1).
MIGRATIONS: list[str] = [
    # 1: sources, desired service state, adopted processes.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sources (
        name        TEXT PRIMARY KEY,
        path        TEXT NOT NULL UNIQUE,
        source_type TEXT NOT NULL CHECK (source_type IN ('yaml', 'sqlite')),
        enabled     INTEGER NOT NULL DEFAULT 1,
        added_at    REAL NOT NULL
    );
    CREATE TABLE services (
        fqn           TEXT PRIMARY KEY,
        desired       TEXT NOT NULL DEFAULT 'stopped'
                      CHECK (desired IN ('running', 'stopped')),
        instances     INTEGER NOT NULL DEFAULT 1 CHECK (instances >= 0),
        restart_count INTEGER NOT NULL DEFAULT 0,
        updated_at    REAL NOT NULL
    );
    CREATE TABLE processes (
        fqn        TEXT NOT NULL,
        instance   INTEGER NOT NULL DEFAULT 0,
        runner     TEXT NOT NULL,
        pid        INTEGER,
        start_time REAL,
        handle     TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL,
        PRIMARY KEY (fqn, instance)
    );
    """,
    # 2: a process record keeps the daemon's part (ports, log offsets, configuration
    # digest) in columns of its own; ``handle`` is then the runner's record alone.
    # Rows of layout 1 have all of it mixed in ``handle`` (read either way).
    """
    ALTER TABLE processes ADD COLUMN layout INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE processes ADD COLUMN ports TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE processes ADD COLUMN stdout_offset INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE processes ADD COLUMN stderr_offset INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE processes ADD COLUMN config_digest TEXT NOT NULL DEFAULT '';
    """,
    # 3: a source may have an owner (a plugin) that decides which of its services run
    # after a daemon restart; NULL: the daemon starts what was running, as before.
    """
    ALTER TABLE sources ADD COLUMN owner TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
