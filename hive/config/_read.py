"""Reading a config file (hive.yaml, a dotenv file) with a bound on its size."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MAX_CONFIG_BYTES", "read_capped"]

# A hive.yaml (or dotenv file) is text a person writes: 8 MiB is far past any real one,
# and keeps a mistaken or hostile file from costing the daemon hundreds of MiB to parse.
MAX_CONFIG_BYTES = 8 * 1024 * 1024


def read_capped(file: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The file's bytes; ValueError (saying the limit) when it holds more than ``limit``.
    Reads at most limit + 1 bytes, whatever the file is (a FIFO, /dev/zero)."""
    with open(file, "rb") as stream:
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"the file is larger than {limit // (1024 * 1024)} MiB, the limit for "
                         "a config file; split it, or move data out of it")
    return raw
