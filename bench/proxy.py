#!/usr/bin/env python3
"""The embedded proxy against direct requests and against Debian's nginx, in one run;
and Hive's Caddy backend against a Caddy configured by hand.

    scripts/install-nginx.sh && scripts/install-caddy.sh && python bench/proxy.py [--seconds 5] [--connections 32] [--rounds 2]

One upstream for all three paths: an nginx answering a fixed 13-byte body (fast, so the
proxies are what is measured), run by Hive as a script service with a route ``/``.
wrk drives each path:

- latency: one connection, back to back (``wrk -c1 --latency``): p50 and p99, and what the
  proxy adds over the direct path;
- throughput: ``--connections`` connections (``wrk -c N``), requests per second.

nginx proxies with one worker and upstream keep-alive: one core, as Hive's proxy (one
event loop) has. Targets: Hive's added p50 <= 0.5 ms; its throughput >= 30 % of nginx's.

With caddy installed, a second daemon (``[proxy] backend = "caddy"``) runs a second such
upstream behind the caddy it starts (``hive-caddy``), and a caddy started by hand with a
plain ``reverse_proxy`` to that upstream is measured too (``caddy``). Target: hive-caddy's
throughput within 10 % of caddy's. Both caddies use all cores (Go's default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hive_client import BlockingClient  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CADDY = shutil.which("caddy")
WRK = shutil.which("wrk") or "/usr/bin/wrk"

_UPSTREAM = """
worker_processes 1; pid {dir}/up.pid; error_log {dir}/up.err; daemon off;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello, world\\n"; }} }} }}
"""
_PROXY = """
worker_processes 1; pid {dir}/px.pid; error_log {dir}/px.err; daemon on;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}
"""


def _caddy_by_hand(port: int, upstream: int) -> str:
    return json.dumps({"admin": {"disabled": True}, "logging": {"logs": {"default": {"level": "WARN"}}},
                       "apps": {"http": {"servers": {"bench": {
                           "listen": [f"127.0.0.1:{port}"], "automatic_https": {"disable": True},
                           "routes": [{"handle": [{"handler": "reverse_proxy",
                                                   "upstreams": [{"dial": f"127.0.0.1:{upstream}"}]}]}]}}}}})


def start_daemon(work: Path, proxy_port: int, upstream_port: int, backend: str) -> subprocess.Popen[bytes]:
    """A daemon in ``work`` whose project runs an nginx upstream on ``upstream_port``."""
    (work / "up.conf").write_text(_UPSTREAM.format(dir=work, port=upstream_port))
    (work / "config.toml").write_text(f'[proxy]\nbackend = "{backend}"\nlisten = ["127.0.0.1:{proxy_port}"]\n')
    project = work / "project"
    project.mkdir()
    (project / "hive.yaml").write_text(f"""version: "1"
services:
  app:
    runner: {{type: script, script: {{run: "exec {NGINX} -p {work} -c {work}/up.conf"}}}}
    rollout: {{type: recreate, recreate: {{ports: {{http: {upstream_port}}}}}}}
    proxy: {{path: /}}
""")
    env = {**os.environ, "HIVE_HOME": str(work), "PYTHONPATH": str(ROOT)}
    with open(work / "daemon.err", "wb") as errors:
        daemon = subprocess.Popen([sys.executable, "-m", "hive.daemon", "--home", str(work), "--foreground"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=errors)
    wait_listening_socket(work / "hive.sock")
    with BlockingClient(work / "hive.sock", timeout=30) as client:
        client.add_source(str(project))
        client.start_source("project")
    wait_listening(upstream_port)
    wait_listening(proxy_port)
    return daemon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on {port} after {timeout} s") from None
            time.sleep(0.02)  # wait-ok: a bench's start-up probe under a deadline


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    found = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for label, key in (("50%", "p50"), ("99%", "p99")):
        found[key] = _ms(re.search(rf"^\s+{re.escape(label)}\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors during the run on port {port}:\n{out}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="runs of every path, in turn; the best is kept")
    args = parser.parse_args()
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: run scripts/install-nginx.sh first")

    work = Path(tempfile.mkdtemp(prefix="hvpx-", dir="/tmp"))
    up_port, hive_port, nginx_port = free_port(), free_port(), free_port()
    (work / "px.conf").write_text(_PROXY.format(dir=work, port=nginx_port, upstream=up_port))
    daemons: list[subprocess.Popen[bytes]] = []
    by_hand: subprocess.Popen[bytes] | None = None
    nginx_started = False
    try:
        (work / "embedded").mkdir()
        daemons.append(start_daemon(work / "embedded", hive_port, up_port, "embedded"))
        subprocess.run([NGINX, "-p", str(work), "-c", str(work / "px.conf")], check=True)
        nginx_started = True
        wait_listening(nginx_port)
        paths = [("direct", up_port), ("hive", hive_port), ("nginx", nginx_port)]
        if CADDY is not None:
            up2_port, hive_caddy_port, caddy_port = free_port(), free_port(), free_port()
            (work / "caddy").mkdir()
            daemons.append(start_daemon(work / "caddy", hive_caddy_port, up2_port, "caddy"))
            (work / "caddy.json").write_text(_caddy_by_hand(caddy_port, up2_port))
            by_hand = subprocess.Popen([CADDY, "run", "--config", str(work / "caddy.json")],
                                       env={**os.environ, "HOME": str(work), "XDG_DATA_HOME": str(work / "xdg"),
                                            "XDG_CONFIG_HOME": str(work / "xdg")},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(caddy_port)
            paths += [("direct2", up2_port), ("hive-caddy", hive_caddy_port), ("caddy", caddy_port)]

        # Rounds over all paths in turn, the best of each kept: a machine shared with other
        # work slows one path's run, not the same path in every round.
        results: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for name, port in paths:
                wrk(port, 1, 1)  # warm-up: connections, caches
                latency = wrk(port, 1, args.seconds)
                load = wrk(port, args.connections, args.seconds)
                best = results.setdefault(name, {"p50": latency["p50"], "p99": latency["p99"], "rps": load["rps"]})
                best["p50"], best["p99"] = min(best["p50"], latency["p50"]), min(best["p99"], latency["p99"])
                best["rps"] = max(best["rps"], load["rps"])
        report(results, args.connections)
    finally:
        if nginx_started:
            subprocess.run([NGINX, "-p", str(work), "-c", str(work / "px.conf"), "-s", "stop"], check=False)
        if by_hand is not None:
            by_hand.terminate()
            by_hand.wait(30)
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def wait_listening_socket(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start ({path} missing)")
        time.sleep(0.02)  # wait-ok: a bench's start-up probe under a deadline


def report(results: dict[str, dict[str, float]], connections: int) -> None:
    direct, hive, nginx = results["direct"], results["hive"], results["nginx"]
    print(f"{'path':10} {'p50 ms':>8} {'p99 ms':>8} {'req/s (c=' + str(connections) + ')':>16}")
    for name, row in results.items():
        print(f"{name:10} {row['p50']:8.3f} {row['p99']:8.3f} {row['rps']:16.0f}")
    added_p50 = hive["p50"] - direct["p50"]
    added_p99 = hive["p99"] - direct["p99"]
    print()
    print(f"hive added p50: {added_p50:.3f} ms (nginx adds {nginx['p50'] - direct['p50']:.3f} ms); target <= 0.5 ms: "
          f"{'met' if added_p50 <= 0.5 else 'MISSED'}")
    print(f"hive added p99: {added_p99:.3f} ms (nginx adds {nginx['p99'] - direct['p99']:.3f} ms)")
    ratio = hive["rps"] / nginx["rps"]
    print(f"hive throughput: {ratio:.0%} of nginx's, {hive['rps'] / direct['rps']:.0%} of direct; "
          f"target >= 30 % of nginx: {'met' if ratio >= 0.3 else 'MISSED'}")
    if "caddy" not in results:
        print("caddy rows skipped: caddy is not installed (scripts/install-caddy.sh)")
        return
    hive_caddy, caddy, direct2 = results["hive-caddy"], results["caddy"], results["direct2"]
    ratio = hive_caddy["rps"] / caddy["rps"]
    print(f"hive-caddy throughput: {ratio:.0%} of caddy by hand's; target >= 90 %: {'met' if ratio >= 0.9 else 'MISSED'}")
    print(f"hive-caddy added p50: {hive_caddy['p50'] - direct2['p50']:.3f} ms "
          f"(caddy by hand adds {caddy['p50'] - direct2['p50']:.3f} ms)")


if __name__ == "__main__":
    main()
