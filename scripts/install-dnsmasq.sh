#!/usr/bin/env bash
# The proxy's DNS tests forward to a real upstream: Debian's dnsmasq, which each test
# starts on a free port. dnsmasq-base is the binary alone (the dnsmasq package would
# start a system resolver on port 53). Idempotent; CI calls it too.
set -euo pipefail
if command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dnsmasq-base
