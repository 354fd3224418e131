#!/usr/bin/env python3
"""Control-plane latency: Hive against floors measured in the same run.

1. Round trip of a ``status`` request on a warm connection (p50, p99, requests/s),
   against a bare msgspec echo server on a Unix socket (asyncio, the daemon's loop).
2. Wall time of ``hive status`` (a fresh process each time) against a bare
   ``python -c`` client that sends the same request with only ``socket`` and ``msgspec``,
   and against ``python -c pass`` of the same interpreter (the floor no CLI can beat);
   with 100 services running, the wall time of ``hive service status s42`` and of
   ``hive services`` (all 100), piped, against the same floor.

    python bench/control_plane.py [--requests 20000] [--runs 40]

Targets: status p50 <= 2x the echo; ``hive status`` <= 1.5x the bare client;
``hive status`` and ``hive service status X`` <= 1.6x ``python -c pass``, ``hive
services`` with 100 services <= 2.5x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hive_client.protocol import FrameReader, Status, encode_frame  # noqa: E402

ECHO_SERVER = r"""
import asyncio, struct, sys, msgspec
decoder = msgspec.msgpack.Decoder()
encoder = msgspec.msgpack.Encoder()
async def serve(reader, writer):
    try:
        while True:
            header = await reader.readexactly(4)
            payload = await reader.readexactly(struct.unpack(">I", header)[0])
            body = encoder.encode(decoder.decode(payload))
            writer.write(struct.pack(">I", len(body)) + body)
            await writer.drain()
    except asyncio.IncompleteReadError:
        writer.close()
async def main():
    server = await asyncio.start_unix_server(serve, sys.argv[1])
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
"""

BARE_CLIENT = r"""
import socket, struct, sys, msgspec
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
body = msgspec.msgpack.encode([1, {"type": "status"}])
s.sendall(struct.pack(">I", len(body)) + body)
header = s.recv(4)
size = struct.unpack(">I", header)[0]
data = b""
while len(data) < size:
    data += s.recv(size - len(data))
msg = msgspec.msgpack.decode(data)
print(msg[1]["pid"])
"""


def round_trips(path: str, requests: int) -> list[float]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    frame = encode_frame(1, Status())
    reader = FrameReader()
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        sock.sendall(frame)
        while (payload := reader.next_payload()) is None:
            reader.feed(sock.recv(65536))
        times.append(time.perf_counter() - began)
        del payload
    sock.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_us": percentile(times, 0.50) * 1e6,
        "p99_us": percentile(times, 0.99) * 1e6,
        "rps": len(times) / sum(times),
    }


def wall_times(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - began)
    return times


SERVICES = 100


def add_services(env: dict[str, str], work: Path) -> None:
    """A project of SERVICES sleepers, all running (``hive up`` returns once they are)."""
    project = work / "bench"
    project.mkdir()
    lines = ['version: "1"', "services:"]
    for index in range(SERVICES):
        lines += [f"  s{index}:", '    runner: {type: script, script: {run: "exec sleep 1000"}}']
    (project / "hive.yaml").write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, "-m", "hive", "up", str(project)], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()

    # An installed Hive has its bytecode compiled (pip does it); a source tree under
    # PYTHONDONTWRITEBYTECODE would recompile every module on every `hive status`.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "hive"), str(ROOT / "hive_client")],
                   check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
    env = dict(os.environ, HIVE_HOME=str(work / "home"), PYTHONPATH=str(ROOT))
    echo_path = str(work / "echo.sock")
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, echo_path], stdout=subprocess.PIPE, text=True)
    if echo.stdout is None or echo.stdout.readline().strip() != "ready":
        raise SystemExit("the echo server did not start")
    daemon = subprocess.Popen([sys.executable, "-m", "hive", "start"], env=env, stdout=subprocess.PIPE, text=True)
    daemon.wait()
    hive_socket = str(work / "home" / "hive.sock")
    try:
        # Warm both, then alternate blocks so drift on a shared machine hits both alike.
        round_trips(echo_path, 2000)
        round_trips(hive_socket, 2000)
        echo_times: list[float] = []
        hive_times: list[float] = []
        block = max(args.requests // 10, 1)
        for _ in range(10):
            echo_times += round_trips(echo_path, block)
            hive_times += round_trips(hive_socket, block)
        echo_stats, hive_stats = summary(echo_times), summary(hive_times)

        add_services(env, work)
        hive_cmd = [str(Path(sys.executable).parent / "hive"), "status"]
        if not Path(hive_cmd[0]).exists():
            hive_cmd = [sys.executable, "-m", "hive", "status"]
        one_cmd = [*hive_cmd[:-1], "service", "status", "s42"]
        all_cmd = [*hive_cmd[:-1], "services"]
        bare_cmd = [sys.executable, "-c", BARE_CLIENT, hive_socket]
        pass_cmd = [sys.executable, "-c", "pass"]
        wall_times(hive_cmd, env, 3)
        wall_times(bare_cmd, env, 3)
        wall_times(pass_cmd, env, 3)
        wall_times(one_cmd, env, 3)
        wall_times(all_cmd, env, 3)
        hive_wall: list[float] = []
        bare_wall: list[float] = []
        pass_wall: list[float] = []
        one_wall: list[float] = []
        all_wall: list[float] = []
        for _ in range(args.runs):  # interleaved: drift on a shared machine hits all alike
            pass_wall += wall_times(pass_cmd, env, 1)
            bare_wall += wall_times(bare_cmd, env, 1)
            hive_wall += wall_times(hive_cmd, env, 1)
            one_wall += wall_times(one_cmd, env, 1)
            all_wall += wall_times(all_cmd, env, 1)
    finally:
        subprocess.run([sys.executable, "-m", "hive", "down", "bench"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "hive", "stop"], env=env, stdout=subprocess.DEVNULL)
        echo.send_signal(signal.SIGTERM)
        echo.wait()
        shutil.rmtree(work, ignore_errors=True)

    p50_ratio = hive_stats["p50_us"] / echo_stats["p50_us"]
    cli_ratio = statistics.median(hive_wall) / statistics.median(bare_wall)
    floor = statistics.median(pass_wall)
    pass_ratio = statistics.median(hive_wall) / floor
    one_ratio = statistics.median(one_wall) / floor
    all_ratio = statistics.median(all_wall) / floor
    print(f"machine: {os.cpu_count()} cpus, {sys.version.split()[0]}, {sys.platform}")
    print(f"{'status round trip':<26}{'p50 us':>10}{'p99 us':>10}{'req/s':>10}")
    print(f"{'  bare msgspec echo':<26}{echo_stats['p50_us']:>10.1f}{echo_stats['p99_us']:>10.1f}{echo_stats['rps']:>10.0f}")
    print(f"{'  hive daemon':<26}{hive_stats['p50_us']:>10.1f}{hive_stats['p99_us']:>10.1f}{hive_stats['rps']:>10.0f}")
    print(f"  ratio p50 hive/echo: {p50_ratio:.2f}x (target <= 2.0x)")
    print(f"{'one-shot CLI wall time':<26}{'median ms':>10}{'p90 ms':>10}")
    print(f"{'  python -c pass':<26}{statistics.median(pass_wall) * 1e3:>10.1f}{percentile(pass_wall, 0.9) * 1e3:>10.1f}")
    print(f"{'  bare python -c client':<26}{statistics.median(bare_wall) * 1e3:>10.1f}{percentile(bare_wall, 0.9) * 1e3:>10.1f}")
    print(f"{'  hive status':<26}{statistics.median(hive_wall) * 1e3:>10.1f}{percentile(hive_wall, 0.9) * 1e3:>10.1f}")
    print(f"{'  hive service status X':<26}{statistics.median(one_wall) * 1e3:>10.1f}{percentile(one_wall, 0.9) * 1e3:>10.1f}")
    print(f"{f'  hive services ({SERVICES})':<26}{statistics.median(all_wall) * 1e3:>10.1f}{percentile(all_wall, 0.9) * 1e3:>10.1f}")
    print(f"  ratio hive status/bare: {cli_ratio:.2f}x (target <= 1.5x)")
    print(f"  ratio hive status/python -c pass: {pass_ratio:.2f}x (target <= 1.6x)")
    print(f"  ratio hive service status X/python -c pass: {one_ratio:.2f}x (target <= 1.6x)")
    print(f"  ratio hive services ({SERVICES})/python -c pass: {all_ratio:.2f}x (target <= 2.5x)")
    met = p50_ratio <= 2.0 and cli_ratio <= 1.5 and pass_ratio <= 1.6 and one_ratio <= 1.6 and all_ratio <= 2.5
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
