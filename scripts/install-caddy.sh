#!/usr/bin/env bash
# The proxy's production backend (proxy.backend = "caddy"): Debian's caddy, which the
# Caddy tests and bench/proxy.py's Caddy rows start on their own ports. Idempotent; CI
# calls it too.
set -euo pipefail
if command -v caddy >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends caddy
# The package starts a system caddy on port 80 and its admin API on 2019; Hive starts its
# own, so stop that one.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet caddy 2>/dev/null; then
    $SUDO systemctl stop caddy || true
    $SUDO systemctl disable caddy >/dev/null 2>&1 || true
fi
