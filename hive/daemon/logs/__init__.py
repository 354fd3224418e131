"""The log pipeline: capture files → LogLines → ring buffers, log files and live streams.

Life cycle, as the daemon drives it::

    hub = LogHub(logs_dir, run_dir, settings.logs)
    await tg.start(hub.run)                  # watching (inotify) until cancelled
    out, err = hub.capture_paths(fqn)        # open these O_APPEND for the child
    hub.follow(fqn, offsets)                 # read from saved offsets (or 0, 0)
    ...                                      # child runs; lines flow
    await hub.drain(fqn); hub.unfollow(fqn)  # after the child exited
    save(hub.offsets(fqn))                   # resume point across daemon restarts

``LogHub`` (``_hub``) is a facade over private modules, one job each: ``_tail`` follows
the capture files, ``_route`` turns their bytes into lines and delivers each, ``_buffer``
keeps the recent lines in memory, ``_fanout`` feeds live subscriptions, ``_files`` owns
the files on disk, ``_parse`` reads levels and fields, ``_sys`` wraps inotify and
fallocate. Their docstrings say how each part works and why.
"""

from ._buffer import DEFAULT_BUFFER_BYTES
from ._fanout import LogSubscription
from ._hub import PRELOAD_LINES, LogHub
from ._parse import guess_level, parse_line
from ._tail import CHUNK_BYTES

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_BUFFER_BYTES",
    "PRELOAD_LINES",
    "LogHub",
    "LogSubscription",
    "guess_level",
    "parse_line",
]
