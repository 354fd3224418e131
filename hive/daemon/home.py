"""The layout of ``HIVE_HOME``: one place decides where each file lives."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hive_client import hive_home
from hive_client._paths import SOCKET_NAME

__all__ = ["HiveHome"]

# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class HiveHome:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None = None) -> HiveHome:
        return cls(hive_home(explicit).absolute())

    @property
    def socket(self) -> Path:
        return self.root / SOCKET_NAME

    @property
    def pid_file(self) -> Path:
        return self.root / "hive.pid"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        """Runtime files the services write to (their captured output)."""
        return self.root / "run"

    @property
    def daemon_log(self) -> Path:
        return self.logs_dir / "daemon.log"

    def restrict_files(self) -> None:
        """The files in the root readable by their owner only (state.db and its WAL, the
        log, config.toml): with an allowed group, the root is 0710 so that members reach
        the socket, and a file made 0644 would be theirs to read by name."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                    if mode & 0o077:
                        os.chmod(entry.path, mode & 0o700)
                except OSError:
                    continue  # gone meanwhile, or not ours: nothing to hide

    def prepare(self, mode: int = 0o700, group: int | None = None) -> None:
        """Create the directories; the root is private to the daemon's user (and, given
        ``group``, enterable by that group to reach the socket: mode 0710)."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root.stat()
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(self.root, mode)
        if group is not None and info.st_gid != group:
            os.chown(self.root, -1, group)
        for sub in (self.logs_dir, self.run_dir):
            sub.mkdir(mode=0o700, exist_ok=True)
