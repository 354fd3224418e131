"""The log pipeline: capture files → LogLines → ring buffers, log files and live streams.

Life cycle, as the daemon drives it::

    hub = LogHub(logs_dir, run_dir, settings.logs)
    await tg.start(hub.run)                  # watching (inotify) until cancelled
    out, err = hub.capture_paths(fqn)        # open these O_APPEND for the child
    hub.follow(fqn, offsets)                 # read from saved offsets (or 0, 0)
    ...                                      # child runs; lines flow
    await hub.drain(fqn); hub.unfollow(fqn)  # after the child exited
    save(hub.offsets(fqn))                   # resume point across daemon restarts
"""

from ._hub import CHUNK_BYTES, DEFAULT_BUFFER_BYTES, PRELOAD_LINES, LogHub, LogSubscription
from ._parse import guess_level, parse_line

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_BUFFER_BYTES",
    "PRELOAD_LINES",
    "LogHub",
    "LogSubscription",
    "guess_level",
    "parse_line",
]
