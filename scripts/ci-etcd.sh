#!/usr/bin/env bash
# The fleet plugin's tests and bench: Debian's etcd-server (3.4). The tests start their own
# members on free ports in temporary directories, so the packaged service is stopped.
# The TLS test makes its certificates with the openssl command. Idempotent; CI calls it too.
set -euo pipefail
if command -v etcd >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server openssl
# The package may start a system member on 2379; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $SUDO systemctl stop etcd || true
fi
