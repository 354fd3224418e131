#!/usr/bin/env python3
"""Hive side by side with supervisord and circusd, and the raw floor, in one run.

    pip install -e '.[bench]' && python bench/peers.py [--sizes 100 500] [--write-docs]

Each tool runs the same programs on the same machine, driven through its own client
library (supervisord: XML-RPC over its Unix socket; circusd: its ZeroMQ client; Hive:
``hive_client``), once with its documented defaults and once tuned for speed:

- cold start of N long-running programs (configured, not started) until the tool reports
  all of them running; floor: ``posix_spawn`` of N ``sleep`` processes;
- the gap between a crash (SIGKILL of the child) and the restarted child's start (the
  child writes its own start time); floor: a loop that reaps and respawns at once;
- stop of 100 until all are gone (the bench checks each pid); floor: SIGTERM to 100
  processes, reaping them, and the same check;
  (circusd has no start-all for watchers that do not autostart: one ``start`` per watcher)
- a status query of the 100 programs with the client library (p50, p99, queries/s) and
  with the tool's CLI, one process per call (``hive services``, ``supervisorctl status``,
  ``circusctl status``; floor: ``python -c pass`` of the same interpreter). Each tool's own status: circusd's
  ``status`` (name -> state) against Hive's ``list_states`` (fqn -> state), supervisord's
  ``getAllProcessInfo`` (a full record each) against Hive's ``list_services`` (rows of
  their own);
- the daemon's resident memory idle and with 100 programs.

``--rounds`` rounds (3) interleave the tools and the floor; the table shows each figure's
median over the rounds and its spread [lowest..highest] (a round's crash gap is the median
of its ``--crashes`` crashes). Ratios are of medians, to the floor and to Hive.
``--write-docs`` puts the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from hive_client import BlockingClient  # noqa: E402

SLEEP = shutil.which("sleep") or "/bin/sleep"
BASH = shutil.which("bash") or "/bin/bash"
BIN = Path(sys.executable).parent


def _crasher(record: Path) -> list[str]:
    """A child that appends "pid start-time" to ``record``, then sleeps."""
    return [BASH, "-c", f'echo "$$ $EPOCHREALTIME" >> {record}; exec {SLEEP} 1000']


def _starts(record: Path) -> list[tuple[int, float]]:
    if not record.exists():
        return []
    found = []
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            found.append((int(parts[0]), float(parts[1])))
    return found


def _wait(condition: Callable[[], bool], timeout: float = 120.0, step: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the tool did not get there in time")
        time.sleep(step)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def crash_gaps(record: Path, count: int, running: Callable[[], bool]) -> list[float]:
    """Kill the child ``count`` times; the gaps between each kill and the next start."""
    gaps = []
    for _ in range(count):
        _wait(lambda: bool(_starts(record)) and running())
        time.sleep(1.2)  # wait-ok: past supervisord's default startsecs, so a kill is a crash
        seen = len(_starts(record))
        pid = _starts(record)[-1][0]
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        _wait(lambda seen=seen: len(_starts(record)) > seen, timeout=60)
        gaps.append(_starts(record)[-1][1] - killed)
    return gaps


# --- the tools --------------------------------------------------------------------------


class Tool:
    name = ""
    status_is_full = False  # its status answers a full record per program

    def __init__(self, work: Path, programs: list[list[str]]) -> None:
        self.work = work
        self.programs = programs

    def launch(self) -> None: ...
    def start_all(self) -> None: ...
    def stop_all(self) -> None: ...
    def all_running(self) -> bool: raise NotImplementedError
    def status(self) -> None: ...
    def full_status(self) -> Callable[[], object] | None:
        return None  # a listing of full records, where ``status`` is a lighter one
    def cli_status(self) -> list[str]: raise NotImplementedError
    def daemon_pid(self) -> int: raise NotImplementedError
    def quit(self) -> None: ...

    def rss_mib(self) -> float:
        return float(psutil.Process(self.daemon_pid()).memory_info().rss) / 2**20


class HiveTool(Tool):
    name = "hive"

    def launch(self) -> None:
        self.home = self.work / "home"
        self.env = dict(os.environ, HIVE_HOME=str(self.home), PYTHONPATH=str(ROOT))
        self.home.mkdir(parents=True, exist_ok=True)
        # The crashes measured must all be restarted: no start limit.
        (self.home / "config.toml").write_text("[restart]\nstart_limit_burst = 0\n")
        subprocess.run([sys.executable, "-m", "hive", "start"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        project = self.work / "proj"
        project.mkdir(parents=True, exist_ok=True)
        lines = ['version: "1"', "services:"]
        for index, argv in enumerate(self.programs):
            command = shlex.join(argv).replace("\\", "\\\\").replace('"', '\\"')
            lines += [f"  p{index}:", f'    runner: {{type: script, script: {{run: "{command}"}}}}',
                      "    restart: {policy: always, delay: 0s, jitter: false}"]
        (project / "hive.yaml").write_text("\n".join(lines) + "\n")
        self.client = BlockingClient(self.home / "hive.sock", timeout=600)
        self.client.connect()
        self.client.add_source(project, name="bench")

    def start_all(self) -> None:
        self.client.start_source("bench")

    def stop_all(self) -> None:
        self.client.stop_source("bench")

    def all_running(self) -> bool:
        return all(state == "running" for state in self.client.list_states("bench").values())

    def status(self) -> None:
        self.client.list_states("bench")

    def full_status(self) -> Callable[[], object] | None:
        return lambda: self.client.list_services("bench")

    def cli_status(self) -> list[str]:
        return [str(BIN / "hive"), "--home", str(self.home), "services", "bench"]

    def daemon_pid(self) -> int:
        return self.client.status().pid or 0

    def quit(self) -> None:
        self.client.close()
        subprocess.run([sys.executable, "-m", "hive", "stop", "--timeout", "300"], env=self.env,
                       stdout=subprocess.DEVNULL, check=False)


class Supervisord(Tool):
    name = "supervisord"
    tuned = False
    status_is_full = True  # getAllProcessInfo: compared with Hive's list_services

    def launch(self) -> None:
        self.socket = self.work / "supervisor.sock"
        self.conf = self.work / "supervisord.conf"
        sections = [
            f"[unix_http_server]\nfile={self.socket}\n",
            f"[supervisord]\nlogfile={self.work}/supervisord.log\npidfile={self.work}/supervisord.pid\n"
            f"childlogdir={self.work}\nnodaemon=true\nminfds=4096\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
            f"[supervisorctl]\nserverurl=unix://{self.socket}\n",
        ]
        for index, argv in enumerate(self.programs):
            command = shlex.join(argv)
            section = f"[program:p{index}]\ncommand={command}\nautostart=false\nautorestart=true\n"
            if self.tuned:
                section += "startsecs=0\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
            sections.append(section)
        self.conf.write_text("\n".join(sections))
        self.process = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from supervisor.xmlrpc import SupervisorTransport

        def answers() -> bool:
            # A fresh proxy per attempt: a refused connection leaves the transport unusable.
            self.server = xmlrpc.client.ServerProxy(
                "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.socket}"))
            try:
                return self.server.supervisor.getState()["statename"] == "RUNNING"  # type: ignore[index,no-any-return]
            except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
                return False

        _wait(answers, step=0.02)

    def start_all(self) -> None:
        self.server.supervisor.startAllProcesses(True)
        _wait(self.all_running)

    def stop_all(self) -> None:
        self.server.supervisor.stopAllProcesses(True)

    def all_running(self) -> bool:
        infos = self.server.supervisor.getAllProcessInfo()
        return all(info["statename"] == "RUNNING" for info in infos)  # type: ignore[union-attr,index]

    def status(self) -> None:
        self.server.supervisor.getAllProcessInfo()

    def cli_status(self) -> list[str]:
        return [str(BIN / "supervisorctl"), "-c", str(self.conf), "status"]

    def daemon_pid(self) -> int:
        return self.process.pid

    def quit(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


class SupervisordTuned(Supervisord):
    name = "supervisord tuned"
    tuned = True


class Circusd(Tool):
    name = "circusd"
    tuned = False

    def launch(self) -> None:
        self.endpoint = f"ipc://{self.work}/circus.sock"
        conf = self.work / "circus.ini"
        sections = [f"[circus]\nendpoint = {self.endpoint}\npubsub_endpoint = ipc://{self.work}/pubsub.sock\n"
                    f"statsd = false\n" + ("check_delay = 0.1\n" if self.tuned else "")]
        for index, argv in enumerate(self.programs):
            command = shlex.join(argv)
            sections.append(f"[watcher:p{index}]\ncmd = {command}\nnumprocesses = 1\nautostart = false\n"
                            + ("warmup_delay = 0\nrespawn = true\n" if self.tuned else ""))
        conf.write_text("\n".join(sections))
        self.process = subprocess.Popen([str(BIN / "circusd"), str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from circus.client import CircusClient

        self.client = CircusClient(endpoint=self.endpoint, timeout=120)
        _wait(lambda: self._answers(), step=0.02)

    def _answers(self) -> bool:
        try:
            return self.client.call({"command": "list", "properties": {}}).get("status") == "ok"
        except Exception:
            return False

    def start_all(self) -> None:
        # `start` without a name skips watchers that do not autostart: one call per watcher,
        # each waited for (circusd drops a command that comes while another runs).
        for index in range(len(self.programs)):
            self.client.call({"command": "start", "properties": {"name": f"p{index}", "waiting": True}})
        _wait(self.all_running)

    def stop_all(self) -> None:
        self.client.call({"command": "stop", "properties": {"waiting": True}})

    def all_running(self) -> bool:
        answer = self.client.call({"command": "status", "properties": {}})
        return all(state == "active" for state in answer.get("statuses", {}).values())

    def status(self) -> None:
        self.client.call({"command": "status", "properties": {}})

    def cli_status(self) -> list[str]:
        return [str(BIN / "circusctl"), "--endpoint", self.endpoint, "status"]

    def daemon_pid(self) -> int:
        return self.process.pid

    def quit(self) -> None:
        self.client.stop()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            # Seen once with a crash-looping watcher: circusd ignored SIGTERM. Its figures
            # are in; leave nothing behind for the next tool.
            print(f"{self.name} did not stop within 60 s of SIGTERM; killing it", file=sys.stderr)
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait()


class CircusdTuned(Circusd):
    name = "circusd tuned"
    tuned = True


TOOLS: list[type[Tool]] = [HiveTool, Supervisord, SupervisordTuned, Circusd, CircusdTuned]


# --- floors -------------------------------------------------------------------------------


def floor_start_stop(count: int) -> tuple[float, float]:
    began = time.perf_counter()
    pids = [os.posix_spawn(SLEEP, [SLEEP, "1000"], os.environ) for _ in range(count)]
    start = time.perf_counter() - began
    began = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    _wait(lambda: not any(_alive(pid) for pid in pids), step=0.001)  # the tools' check
    return start, time.perf_counter() - began


def floor_cli() -> float:
    """A status by CLI can do no better than starting the interpreter: ``python -c pass``
    (the same interpreter as Hive's and supervisorctl's), median of 7."""
    took = []
    for _ in range(7):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def floor_gaps(work: Path, count: int) -> list[float]:
    record = work / "floor-starts"
    argv = _crasher(record)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            pid = os.posix_spawn(argv[0], argv, os.environ)
            os.waitpid(pid, 0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        return crash_gaps(record, count, lambda: True)
    finally:
        stop.set()
        for pid, _ in _starts(record)[-1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        thread.join(5)


# --- scenarios ----------------------------------------------------------------------------


def measure(tool_class: type[Tool], work: Path, sizes: list[int], crashes: int, queries: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for size in sizes:
        tool = tool_class(work / f"{tool_class.__name__}-{size}", [[SLEEP, "1000"]] * size)
        tool.work.mkdir(parents=True)
        tool.launch()
        try:
            if size == 100:
                figures["rss idle"] = tool.rss_mib()
            began = time.perf_counter()
            tool.start_all()
            figures[f"start {size}"] = time.perf_counter() - began
            if size == 100:
                figures["rss 100"] = tool.rss_mib()
                took = []
                for _ in range(20):
                    tool.status()
                began_all = time.perf_counter()
                for _ in range(queries):
                    began = time.perf_counter()
                    tool.status()
                    took.append(time.perf_counter() - began)
                figures["status qps"] = queries / (time.perf_counter() - began_all)
                figures["status p50"] = _percentile(took, 0.5)
                figures["status p99"] = _percentile(took, 0.99)
                full = tool.full_status()
                if full is not None:
                    took = []
                    began_all = time.perf_counter()
                    for _ in range(queries):
                        began = time.perf_counter()
                        full()
                        took.append(time.perf_counter() - began)
                    figures["full qps"] = queries / (time.perf_counter() - began_all)
                    figures["full p50"] = _percentile(took, 0.5)
                    figures["full p99"] = _percentile(took, 0.99)
                cli = []
                for _ in range(7):
                    began = time.perf_counter()
                    subprocess.run(tool.cli_status(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   check=False)
                    cli.append(time.perf_counter() - began)
                figures["cli status"] = statistics.median(cli)
                children = [c.pid for c in psutil.Process(tool.daemon_pid()).children(recursive=True)]
                began = time.perf_counter()
                tool.stop_all()
                _wait(lambda children=children: not any(_alive(pid) for pid in children), step=0.001)
                figures["stop 100"] = time.perf_counter() - began
            else:
                tool.stop_all()
        finally:
            tool.quit()
    record = work / f"{tool_class.__name__}-crash-starts"
    tool = tool_class(work / f"{tool_class.__name__}-crash", [_crasher(record)])
    tool.work.mkdir(parents=True)
    tool.launch()
    try:
        tool.start_all()
        gaps = crash_gaps(record, crashes, tool.all_running)
        figures["crash gap"] = statistics.median(gaps)
    finally:
        tool.quit()
    return figures


ROWS = [
    ("cold start of 100", "start 100", "ms"), ("cold start of 500", "start 500", "ms"),
    ("crash -> restart gap", "crash gap", "ms"), ("stop of 100", "stop 100", "ms"),
    ("status p50 (client library)", "status p50", "us"), ("status p99 (client library)", "status p99", "us"),
    ("status queries/s", "status qps", ""),
    ("full records p50 (Hive list_services)", "full p50", "us"),
    ("full records p99 (Hive list_services)", "full p99", "us"),
    ("full records queries/s (Hive list_services)", "full qps", ""), ("status by CLI, per call", "cli status", "ms"),
    ("RSS idle (MiB)", "rss idle", ""), ("RSS with 100 (MiB)", "rss 100", ""),
]


Figures = dict[str, float]


def combine(rounds: list[Figures]) -> dict[str, tuple[float, float, float]]:
    """Each figure over the rounds: (median, lowest, highest)."""
    keys = {key for figures in rounds for key in figures}
    combined = {}
    for key in keys:
        values = [figures[key] for figures in rounds if key in figures]
        combined[key] = (statistics.median(values), min(values), max(values))
    return combined


def _full_status(name: str) -> bool:
    return any(tool.name == name and tool.status_is_full for tool in TOOLS)


def render(results: dict[str, list[Figures]], floors: list[Figures]) -> str:
    names = ["floor", *results]
    spreads = {name: combine(rounds) for name, rounds in results.items()}
    spreads["floor"] = combine(floors)
    floor = {key: value[0] for key, value in spreads["floor"].items()}
    lines = ["| scenario | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, unit in ROWS:
        cells = []
        for name in names:
            if key not in spreads[name]:
                cells.append("-")
                continue
            value, lowest, highest = spreads[name][key]
            scale = 1e3 if unit == "ms" else 1e6 if unit == "us" else 1
            text = f"{value * scale:.1f}{unit}"
            if highest > lowest:
                text += f" [{lowest * scale:.1f}..{highest * scale:.1f}]"
            # A status of full records is compared with Hive's full records.
            versus = key.replace("status ", "full ") if key.startswith("status ") and _full_status(name) else key
            hive = spreads.get("hive", {}).get(versus, (None,))[0]
            if name not in ("floor", "hive") and hive:
                ratio = (hive / value) if key.endswith("qps") else (value / hive)
                text += f" ({ratio:.1f}x hive{' list_services' if versus != key else ''})"
            if name == "hive" and floor.get(key):
                text += f" ({value / floor[key]:.2f}x floor)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 500])
    parser.add_argument("--crashes", type=int, default=5, help="crashes per round")
    parser.add_argument("--rounds", type=int, default=3, help="each tool measured this many times, interleaved")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--tools", nargs="+", default=[t.name for t in TOOLS])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if 100 not in args.sizes:
        args.sizes.insert(0, 100)
    work = Path(tempfile.mkdtemp(prefix="hvpeers-", dir="/tmp"))
    floors: list[Figures] = []
    results: dict[str, list[Figures]] = {}
    try:
        # Rounds interleave the tools, so a slow spell of a shared machine hits all alike.
        for round_number in range(1, args.rounds + 1):
            floor: Figures = {}
            for size in args.sizes:
                start, stop = floor_start_stop(size)
                floor[f"start {size}"] = start
                if size == 100:
                    floor["stop 100"] = stop
            (work / f"floor-{round_number}").mkdir()
            floor["crash gap"] = statistics.median(floor_gaps(work / f"floor-{round_number}", args.crashes))
            floor["cli status"] = floor_cli()
            floors.append(floor)
            for tool_class in TOOLS:
                if tool_class.name in args.tools:
                    print(f"round {round_number}/{args.rounds}: {tool_class.name} ...", file=sys.stderr, flush=True)
                    place = work / f"round-{round_number}"
                    place.mkdir(exist_ok=True)
                    results.setdefault(tool_class.name, []).append(
                        measure(tool_class, place, args.sizes, args.crashes, args.queries))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(results, floors)
    machine = f"{os.cpu_count()} cpus, Python {platform.python_version()}, {platform.platform()}"
    print(f"machine: {machine}\n{table}")
    if args.write_docs:
        path = ROOT / "docs" / "performance.md"
        text = path.read_text()
        start, end = "<!-- peers:start -->", "<!-- peers:end -->"
        block = (f"{start}\nMeasured {time.strftime('%Y-%m-%d')} on {machine}: medians of {args.rounds} "
                 f"rounds [lowest..highest].\n\n{table}\n{end}")
        if start in text:
            text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text += f"\n## Side by side — `python bench/peers.py`\n\n{block}\n"
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
