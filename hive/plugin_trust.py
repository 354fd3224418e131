"""Pinning core plugins: what ``[plugin_trust]`` in config.toml compares.

A pin is a distribution's name, its version, and the SHA-256 of its installed files: the
files its ``RECORD`` lists (bytecode caches aside), each hashed as it is on disk now, the
path and the file's own SHA-256 fed in path order into one digest. An edited file, an
added module or another version of the package gives another digest.

``hive plugins pin NAME`` prints the pin of what is installed, to paste into config.toml.
"""

from __future__ import annotations

import csv
import hashlib
import os

from hive.entry_points import EntryPoint

__all__ = ["Pin", "pin_of"]


class Pin:
    def __init__(self, distribution: str, version: str, sha256: str) -> None:
        self.distribution = distribution
        self.version = version
        self.sha256 = sha256

    def toml(self) -> str:
        return ("[[plugin_trust.allow]]\n"
                f'distribution = "{self.distribution}"\nversion = "{self.version}"\n'
                f'sha256 = "{self.sha256}"\n')


def _version(metadata_dir: str) -> str:
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(metadata_dir, name), encoding="utf-8") as metadata:
                for line in metadata:
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return ""


def pin_of(entry: EntryPoint) -> Pin:
    """The pin of the distribution ``entry`` comes from; OSError if its files cannot be read."""
    if not entry.metadata_dir:
        raise OSError(f"no metadata directory is known for {entry.distribution}")
    root = os.path.dirname(entry.metadata_dir)
    with open(os.path.join(entry.metadata_dir, "RECORD"), encoding="utf-8", newline="") as record:
        paths = sorted({row[0] for row in csv.reader(record) if row and row[0]})
    digest = hashlib.sha256()
    for path in paths:
        if "__pycache__" in path or path.endswith((".pyc", "RECORD")):
            continue
        with open(os.path.join(root, path), "rb") as installed:
            content = hashlib.sha256(installed.read()).hexdigest()
        digest.update(f"{path}\0{content}\n".encode())
    return Pin(entry.distribution, _version(entry.metadata_dir), digest.hexdigest())
