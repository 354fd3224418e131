#!/usr/bin/env bash
# The database servers the protocol health-check tests start (tests/health/test_servers.py):
# Debian's redis-server, postgresql and mariadb-server. The tests run each server themselves,
# on a free port in a private directory, so the system services are not started here.
# Idempotent: what is installed already is kept.
#
#   sudo scripts/ci-servers.sh
set -euo pipefail

log() { printf 'ci-servers: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-servers: run as root (it installs packages)" >&2
    exit 1
fi

packages=(redis-server postgresql mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    # The packages would start their system services; the tests start their own servers.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$added_policy" ] || rm -f "$policy"
fi
log "ready: $(redis-server --version | cut -d' ' -f1-3), $(ls /usr/lib/postgresql), $(/usr/sbin/mariadbd --version | cut -d' ' -f2-4)"
