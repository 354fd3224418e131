#!/usr/bin/env python3
"""The proxy's DNS responder against Debian's dnsmasq, in one run.

    scripts/install-dnsmasq.sh && python bench/dns.py [--queries 20000] [--window 32]

dnsmasq answers ``*.example.test`` itself (``--address``): it is the floor, and the
upstream of a daemon with ``proxy.dns`` on and a route host ``api.myapp.test``. Paths:

- ``dnsmasq``: straight to dnsmasq (www.example.test);
- ``hive-local``: a route host, answered by the daemon;
- ``hive-forward``: www.example.test through the daemon to dnsmasq.

Latency: one query at a time over UDP, p50 and p99. Throughput: ``--window`` queries in
flight over one UDP socket, answers per second. Reported as ratios to dnsmasq's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hive_client import BlockingClient  # noqa: E402

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def latency(port: int, name: str, count: int) -> tuple[float, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(5)
        times = []
        for index in range(count):
            began = time.perf_counter()
            sock.send(query(name, index & 0xFFFF))
            sock.recv(512)
            times.append(time.perf_counter() - began)
    times.sort()
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def throughput(port: int, name: str, count: int, window: int) -> float:
    packets = [query(name, index & 0xFFFF) for index in range(count)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(5)
        sent = received = 0
        began = time.perf_counter()
        while received < count:
            while sent < count and sent - received < window:
                sock.send(packets[sent])
                sent += 1
            with contextlib.suppress(TimeoutError):  # a lost datagram: let the window move on
                sock.recv(512)
            received += 1
        return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
    upstream, dns_port = free_port(), free_port()
    dnsmasq = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={upstream}", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--address=/example.test/10.1.2.3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (home / "config.toml").write_text(f'[proxy]\nlisten = ["127.0.0.1:{free_port()}"]\n[proxy.dns]\n'
                                      f'listen = "127.0.0.1:{dns_port}"\nupstream = "127.0.0.1:{upstream}"\n')
    project = home / "p"
    project.mkdir()
    (project / "hive.yaml").write_text(
        'version: "1"\nproxy: {dns: {enabled: true}}\nservices:\n  web:\n'
        '    runner: {type: script, script: {run: "exec sleep 1000"}}\n'
        f'    rollout: {{type: recreate, recreate: {{ports: {{http: {free_port()}}}}}}}\n'
        "    proxy: {host: api.myapp.test, path: /}\n")
    env = dict(os.environ, HIVE_HOME=str(home))
    daemon = subprocess.Popen([sys.executable, "-m", "hive.daemon", "--home", str(home), "--foreground"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (home / "hive.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # wait-ok: a bench's start-up, under a deadline
        with BlockingClient(home / "hive.sock", timeout=30) as client:
            client.add_source(str(project))
            while client.status().dns_address is None and time.monotonic() < deadline:
                time.sleep(0.05)  # wait-ok: the responder starts after the source's event
        paths = {"dnsmasq": (upstream, "www.example.test"), "hive-local": (dns_port, "api.myapp.test"),
                 "hive-forward": (dns_port, "www.example.test")}
        rows = {}
        for label, (port, name) in paths.items():
            latency(port, name, 500)  # warm-up
            p50, p99 = latency(port, name, args.queries // 4)
            rows[label] = (p50, p99, throughput(port, name, args.queries, args.window))
        print(f"{'path':<14}{'p50 ms':>9}{'p99 ms':>9}{f'q/s (window {args.window})':>22}")
        for label, (p50, p99, qps) in rows.items():
            print(f"{label:<14}{p50:9.3f}{p99:9.3f}{qps:22.0f}")
        floor = rows["dnsmasq"]
        for label in ("hive-local", "hive-forward"):
            print(f"{label}: p50 {rows[label][0] / floor[0]:.2f}x dnsmasq's, "
                  f"throughput {rows[label][2] / floor[2]:.0%} of dnsmasq's")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        dnsmasq.terminate()
        dnsmasq.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
