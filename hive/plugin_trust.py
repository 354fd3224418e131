"""Pinning core plugins: what ``[plugin_trust]`` in config.toml compares.

A pin is a distribution's name, its version, and the SHA-256 of its installed files: the
files its ``RECORD`` lists (bytecode caches aside), each hashed as it is on disk now, the
path and the file's own SHA-256 fed in path order into one digest. An edited file, an
added module or another version of the package gives another digest. An editable
install's RECORD lists only its ``.pth`` and finder: the source files the finder maps are
hashed too. Bytecode caches are not in the digest (Python writes them), but one that
Python would run instead of a pinned source must be compiled from it
(:func:`bytecode_problems`): a planted ``.pyc`` with the source's mtime and size is refused.

``hive plugins pin NAME`` prints the pin of what is installed, to paste into config.toml.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import marshal
import os

from hive.entry_points import EntryPoint

__all__ = ["Pin", "bytecode_problems", "code_files", "pin_of"]


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


def _recorded(entry: EntryPoint) -> tuple[str, list[str]]:
    """The distribution's root and the paths its RECORD lists, minus bytecode caches
    (Python writes them; :func:`bytecode_problems` checks them against their sources)."""
    if not entry.metadata_dir:
        raise OSError(f"no metadata directory is known for {entry.distribution}")
    root = os.path.dirname(entry.metadata_dir)
    with open(os.path.join(entry.metadata_dir, "RECORD"), encoding="utf-8", newline="") as record:
        paths = sorted({row[0] for row in csv.reader(record) if row and row[0]})
    return root, [path for path in paths if "__pycache__" not in path and not path.endswith("RECORD")]


def _editable_sources(root: str, path: str) -> list[str]:
    """The source files an editable install's finder (``__editable___*_finder.py``) maps
    its modules to: the code that runs, which its RECORD does not list."""
    if not (os.path.basename(path).startswith("__editable__") and path.endswith("_finder.py")):
        return []
    with open(os.path.join(root, path), encoding="utf-8") as finder:
        tree = ast.parse(finder.read())
    mapping: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in targets) and node.value is not None:
                mapping = ast.literal_eval(node.value)
    files: list[str] = []
    for location in sorted(mapping.values()):
        if os.path.isfile(location):
            files.append(location)
            continue
        for directory, subdirectories, names in os.walk(location):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            files.extend(os.path.join(directory, name) for name in sorted(names) if name.endswith(".py"))
    return files


def code_files(entry: EntryPoint) -> list[tuple[str, str]]:
    """(name in the pin, path on disk) of every file the pin covers: those RECORD lists
    and, for an editable install, the sources its finder maps."""
    root, paths = _recorded(entry)
    files = [(path, os.path.join(root, path)) for path in paths]
    for path in paths:
        files.extend((f"editable:{source}", source) for source in _editable_sources(root, path))
    return files


def pin_of(entry: EntryPoint) -> Pin:
    """The pin of the distribution ``entry`` comes from; OSError if its files cannot be read."""
    digest = hashlib.sha256()
    for name, path in code_files(entry):
        with open(path, "rb") as installed:
            content = hashlib.sha256(installed.read()).hexdigest()
        digest.update(f"{name}\0{content}\n".encode())
    return Pin(entry.distribution, _version(entry.metadata_dir), digest.hexdigest())


# (cache path) -> the SHA-256 of a cache and of its source found to match: compiling the
# source again is what costs (all of Hive's files for a built-in plugin), hashing is cheap.
_matched: dict[str, tuple[bytes, bytes]] = {}


def bytecode_problems(entry: EntryPoint) -> list[str]:
    """The bytecode caches Python would run instead of a pinned source that were not
    compiled from it (planted, with the source's mtime and size in their header). A
    cache and source whose contents were found to match before are not compiled again."""
    problems = []
    for _, path in code_files(entry):
        if not path.endswith(".py"):
            continue
        cache = importlib.util.cache_from_source(path)
        try:
            with open(cache, "rb") as cached:
                data = cached.read()
            with open(path, "rb") as source_file:
                source = source_file.read()
            stat = os.stat(path)
        except OSError:
            continue  # no cache: the source runs
        if not _would_run(data, source, stat):
            continue
        known = (hashlib.sha256(data).digest(), hashlib.sha256(source).digest())
        if _matched.get(cache) == known:
            continue
        try:
            matches = marshal.loads(data[16:]) == compile(source, path, "exec", dont_inherit=True)
        except (ValueError, EOFError, TypeError, SyntaxError):
            matches = False
        if matches:
            _matched[cache] = known
        else:
            problems.append(f"{cache} is not compiled from {path}")
    return problems


def _would_run(data: bytes, source: bytes, stat: os.stat_result) -> bool:
    """Whether the import system would load this cache for this source."""
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(data[4:8], "little")
    if flags & 0b1:  # hash-based: checked ones must match the source's hash
        return not flags & 0b10 or data[8:16] == importlib.util.source_hash(source)
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    return mtime == int(stat.st_mtime) & 0xFFFFFFFF and size == stat.st_size & 0xFFFFFFFF
