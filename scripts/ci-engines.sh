#!/usr/bin/env bash
# Container engines for the tests, on a Debian 12 machine with no registry access:
# podman (runc, cgroupfs; catatonit for `init: true`), a Docker engine (dockerd without iptables or a bridge),
# docker-compose, and the local test image localhost/hive-test:busybox built from
# busybox-static. (podman-compose comes from PyPI with the test extra.) Idempotent: what
# is there already is kept.
#
#   sudo scripts/ci-engines.sh
set -euo pipefail

IMAGE="localhost/hive-test:busybox"
log() { printf 'ci-engines: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-engines: run as root (it installs packages and starts dockerd)" >&2
    exit 1
fi

packages=(podman runc catatonit busybox-static docker.io docker-compose)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The default crun fails here (cgroups hybrid mode, setrlimit refused): runc, cgroupfs, and
# ulimits the sandbox allows.
mkdir -p /etc/containers
if ! grep -q 'runtime = "runc"' /etc/containers/containers.conf 2>/dev/null; then
    log "configuring podman (runc, cgroupfs)"
    cat > /etc/containers/containers.conf <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
fi

# The Docker engine: no iptables, no bridge (tests use host networking).
if ! docker version >/dev/null 2>&1; then
    log "starting dockerd"
    # Its own session: a job control or test that kills the caller's process group must not take the engine.
    setsid nohup dockerd --iptables=false --bridge=none >/var/log/hive-ci-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 150); do
        docker version >/dev/null 2>&1 && break
        sleep 0.2
    done
    docker version >/dev/null 2>&1 || { log "dockerd did not come up:"; tail -20 /var/log/hive-ci-dockerd.log >&2; exit 1; }
fi

# dockerd runs without its default bridge; a user-defined bridge network still publishes
# ports (through docker-proxy), which the port tests need.
docker network inspect hive-test >/dev/null 2>&1 || docker network create hive-test >/dev/null

# The test image: busybox and its applets, imported into both engines.
if ! podman image exists "$IMAGE" || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building $IMAGE"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
    echo "nobody:x:65534:65534:nobody:/:/bin/sh" >> "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
    tar -C "$root" -cf "$root.tar" .
    podman image exists "$IMAGE" || podman import -q "$root.tar" "$IMAGE" >/dev/null
    docker image inspect "$IMAGE" >/dev/null 2>&1 || docker import "$root.tar" "$IMAGE" >/dev/null
    rm -f "$root.tar"
fi
log "ready: $(podman --version), $(docker --version | cut -d, -f1), image $IMAGE"
