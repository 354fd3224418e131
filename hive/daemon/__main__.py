"""``python -m hive.daemon``: what ``hive start`` spawns and systemd runs."""

from __future__ import annotations

import argparse
import sys

from .lifecycle import run_daemon


def main() -> int:
    parser = argparse.ArgumentParser(prog="hive-daemon", description="Run the Hive daemon.")
    parser.add_argument("--home", help="HIVE_HOME (default: $HIVE_HOME or ~/.hive)")
    parser.add_argument("--foreground", action="store_true", help="log to stderr")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    return run_daemon(args.home, foreground=args.foreground, ready_fd=args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
