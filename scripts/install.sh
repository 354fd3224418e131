#!/usr/bin/env bash
# Install Hive for the current user and start the daemon.
#
#   ./scripts/install.sh            # from a clone of the repository
#
# Hive goes into its own virtualenv ($HIVE_PREFIX, default ~/.local/share/hive);
# `hive` is linked into ~/.local/bin. Run it again to upgrade.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${HIVE_PREFIX:-$HOME/.local/share/hive}
bindir=${HIVE_BINDIR:-$HOME/.local/bin}
python=${PYTHON:-python3}

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "hive: Python 3.11 or newer is needed (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1; then
    echo "hive: the venv module is missing; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
fi

echo "==> installing Hive into $prefix"
"$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --upgrade pip
"$prefix/venv/bin/python" -m pip install --quiet "$here"
mkdir -p "$bindir"
ln -sf "$prefix/venv/bin/hive" "$bindir/hive"

case ":$PATH:" in
    *":$bindir:"*) ;;
    *) echo "==> add $bindir to your PATH to run \`hive\` directly" ;;
esac

if "$bindir/hive" status >/dev/null 2>&1; then
    echo "==> restarting the running daemon on the new version"
    "$bindir/hive" stop --keep-services
fi
"$bindir/hive" start
"$bindir/hive" status
