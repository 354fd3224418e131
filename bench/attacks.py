#!/usr/bin/env python3
"""Memory attacks by a read-scope client, and what the daemon holds while they run.

Each attack runs for ``--seconds`` against a daemon with a chatty service (2 KB lines) and
a crash-looping one (``restart: always``). Run as root, the attacker is a member of the
daemon's allowed group with ``group_scope = "read"`` (a user and group made for the run,
removed after); otherwise it runs as the daemon's own user. Reported per attack:

- daemon RSS above idle, at its peak during the attack (bound: 200 MiB);
- ``status`` round trip on a warm connection of the owner, p50/p99 (floor: the same
  measured before the attack; bound: p99 under 100 ms);
- restarts of the crash-looping service during the attack (it must keep restarting);
- RSS 5 s after the attacker left (memory returns).

    python bench/attacks.py [--seconds 10] [--only pipelined]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hive_client.protocol import (  # noqa: E402
    PROTOCOL_VERSION,
    FrameReader,
    GetLogs,
    Hello,
    Status,
    StreamLogs,
    encode_frame,
)
from tests.support import can_create_users, temporary_user  # noqa: E402

MIB = 1024 * 1024

# Connects COUNT sockets, sends stdin's bytes on each, reads nothing, holds them until
# its stdin's second part (a line) arrives. Standard library only: it runs as another user.
ATTACKER = r"""
import socket, sys
path, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
payload = sys.stdin.buffer.read(size)
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload)
    except OSError:
        pass
    socks.append(s)
print("holding", flush=True)
sys.stdin.buffer.readline()
"""

CHATTY = ("exec python3 -u -c \"import sys, time\nwhile True:\n"
          "    sys.stdout.write('x' * 2000 + chr(10)); sys.stdout.flush(); time.sleep(0.0005)\"")


def attacks() -> list[tuple[str, int, bytes]]:
    hello = encode_frame(1, Hello(protocol=PROTOCOL_VERSION))
    return [
        ("stream_logs tail=10^9, never read", 1,
         json.dumps({"type": "stream_logs", "fqn": "p:chatty", "tail": 10**9}).encode() + b"\n"),
        ("12 connections x 64 pipelined get_logs, never read", 12,
         hello + b"".join(encode_frame(2 + i, GetLogs(fqn="p:chatty", lines=50_000)) for i in range(64))),
        ("60 connections each holding an unfinished 8 MiB frame", 60,
         (8 * MIB - 16).to_bytes(4, "big") + b"\x00" * (8 * MIB - 1024)),
        ("20,000 stream_logs on one connection", 1,
         hello + b"".join(encode_frame(2 + i, StreamLogs(fqn=f"p:s{i}")) for i in range(20_000))),
        ("400 connections that sent only '{'", 400, b"{"),
    ]


@contextlib.contextmanager
def reader_user() -> Iterator[tuple[pwd.struct_passwd, str] | None]:
    """A user and group made for this run (unique names), or None when not root."""
    if can_create_users() is not None:
        yield None
        return
    with temporary_user() as made:
        yield made


def status_round_trips(path: Path, stop: threading.Event, out: list[float]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.fspath(path))
    sock.settimeout(30)
    reader = FrameReader(64 * MIB)
    msg_id = 0
    while not stop.is_set():
        msg_id += 1
        started = time.perf_counter()
        sock.sendall(encode_frame(msg_id, Status()))
        while reader.next_payload() is None:
            reader.feed(sock.recv(1 << 20))
        out.append(time.perf_counter() - started)
        stop.wait(0.01)  # wait-ok: a request every 10 ms, the rate a dashboard polls at
    sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(daemon: psutil.Process, path: Path, seconds: float, starts: Path,
            during: Callable[[], None] | None = None) -> dict[str, float]:
    stop = threading.Event()
    times: list[float] = []
    thread = threading.Thread(target=status_round_trips, args=(path, stop, times))
    restarts_before = count(starts)
    peak = 0
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, daemon.memory_info().rss)
        time.sleep(0.1)  # wait-ok: RSS sampling interval
    stop.set()
    thread.join()
    return {"p50": percentile(times, 0.5) * 1000, "p99": percentile(times, 0.99) * 1000,
            "peak": peak, "restarts": count(starts) - restarts_before}


def count(path: Path) -> int:
    return path.read_text().count("s") if path.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="", help="run only the attacks whose name contains this text")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hv-atk-", dir="/tmp"))
    env = dict(os.environ, HIVE_HOME=str(home), PYTHONPATH=str(ROOT))
    with reader_user() as made:
        user = made[0] if made is not None else None
        home.chmod(0o755)
        config = "[daemon]\n[restart]\ndelay = 0.05\nmax_delay = 0.2\njitter = false\nstart_limit_burst = 0\n"
        if made is not None:
            config = f'[daemon]\nallowed_group = "{made[1]}"\ngroup_scope = "read"\n' + config.removeprefix("[daemon]\n")
        (home / "config.toml").write_text(config)
        starts = home / "starts"
        project = home / "p"
        project.mkdir()
        (project / "hive.yaml").write_text(textwrap.dedent(f"""\
            version: "1"
            services:
              chatty:
                runner: {{type: script, script: {{run: {json.dumps(CHATTY)}}}}}
              crasher:
                restart: always
                runner: {{type: script, script: {{run: "printf s >> {starts}; sleep 0.2; exit 3"}}}}
            """))
        subprocess.run([sys.executable, "-m", "hive", "start"], env=env, check=True, capture_output=True)
        try:
            up = subprocess.run([sys.executable, "-m", "hive", "up", str(project)], env=env, capture_output=True, text=True)
            print(up.stdout.strip(), up.stderr.strip())
            pid = int(json.loads(subprocess.run([sys.executable, "-m", "hive", "status", "--json"], env=env,
                                                capture_output=True, text=True).stdout)["pid"])
            daemon = psutil.Process(pid)
            path = home / "hive.sock"
            time.sleep(3)  # wait-ok: let the chatty service fill its buffer
            floor = measure(daemon, path, args.seconds, starts)
            idle = daemon.memory_info().rss
            print(f"idle: RSS {idle / MIB:.0f} MiB, status p50 {floor['p50']:.2f} ms p99 {floor['p99']:.2f} ms, "
                  f"{floor['restarts']:.0f} restarts in {args.seconds:g} s")
            rows = []
            for name, conns, payload in attacks():
                if args.only not in name:
                    continue
                def demote() -> None:
                    if user is not None:
                        os.setgroups([])
                        os.setgid(user.pw_gid)
                        os.setuid(user.pw_uid)

                attacker = subprocess.Popen(
                    ["/usr/bin/python3", "-c", ATTACKER, str(path), str(conns), str(len(payload))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=demote, cwd="/")
                assert attacker.stdin is not None and attacker.stdout is not None
                attacker.stdin.write(payload)
                attacker.stdin.flush()
                attacker.stdout.readline()
                result = measure(daemon, path, args.seconds, starts)
                attacker.stdin.write(b"go\n")
                attacker.stdin.close()
                attacker.wait()
                time.sleep(5)  # wait-ok: the time memory gets to return after the attacker left
                after = daemon.memory_info().rss
                rows.append((name, result, after))
                print(f"{name}: RSS +{(result['peak'] - idle) / MIB:.0f} MiB above idle (peak), "
                      f"status p50 {result['p50']:.2f} ms p99 {result['p99']:.2f} ms, "
                      f"{result['restarts']:.0f} restarts, after: +{(after - idle) / MIB:.0f} MiB", flush=True)
            log_text = (home / "logs" / "daemon.log").read_text(errors="replace")
            if os.environ.get("HIVE_BENCH_VERBOSE"):
                print(log_text[-3000:])
            # (refusals and timeouts are logged once a minute per uid, with a count)
            print(f"daemon log lines: {log_text.count('cut off')} cut off, {log_text.count('refused')} refused, "
                  f"{log_text.count('closed connection')} timed out, {log_text.count('turned away')} turned away")
            worst = max(r[1]["peak"] - idle for r in rows)
            print(f"worst RSS above idle: {worst / MIB:.0f} MiB (bound 200); "
                  f"worst p99 {max(r[1]['p99'] for r in rows):.1f} ms (bound 100)")
        finally:
            subprocess.run([sys.executable, "-m", "hive", "stop"], env=env, capture_output=True)
            with contextlib.suppress(Exception):
                daemon.wait(30)
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
