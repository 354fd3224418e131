#!/usr/bin/env bash
# Install Hive as a system service (run as root):
#
#   sudo ./scripts/install-systemd.sh            # hive.service, started now
#   sudo ./scripts/install-systemd.sh --socket   # also hive.socket (socket activation)
#
# Creates the `hive` system user, installs Hive into /opt/hive, links
# /usr/local/bin/hive, installs the units and enables them. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${HIVE_PREFIX:-/opt/hive}
with_socket=false
[ "${1:-}" = "--socket" ] && with_socket=true

if [ "$(id -u)" -ne 0 ]; then
    echo "hive: run this as root (sudo $0)" >&2
    exit 1
fi

if ! id hive >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/hive --no-create-home --shell /usr/sbin/nologin hive
fi
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --upgrade pip
"$prefix/venv/bin/python" -m pip install --quiet "$here"
ln -sf "$prefix/venv/bin/hive" /usr/local/bin/hive

install -m 0644 "$here/systemd/hive.service" /etc/systemd/system/hive.service
if $with_socket; then
    install -m 0644 "$here/systemd/hive.socket" /etc/systemd/system/hive.socket
fi
systemctl daemon-reload
if $with_socket; then
    systemctl enable --now hive.socket
fi
systemctl enable --now hive.service
systemctl --no-pager status hive.service | head -n 5
