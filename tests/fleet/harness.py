"""The fleet's harness, for its tests and bench/fleet.py: real etcd members (Debian's
etcd-server, scripts/ci-etcd.sh) on free ports in temporary directories, real daemons with a
HIVE_HOME each, and a ledger that every fleet instance writes when it starts and stops."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from hive_client import BlockingClient, Unavailable
from tests.support import DaemonProcess, free_port, start_daemon, wait_for

ETCD = shutil.which("etcd")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)  # how it was started (a restart starts it again)


@dataclass
class EtcdCluster:
    """``size`` members on one machine (``--pre-vote``), each on free ports; with ``tls``
    (see :func:`make_certificates`), clients speak https and must show a certificate."""

    root: Path
    size: int
    tls: Path | None = None
    host: str = "127.0.0.1"  # where clients reach the members (peers stay on loopback)
    members: list[Member] = field(default_factory=list)

    @classmethod
    def launch(cls, size: int, started: list[EtcdCluster] | None = None, tls: Path | None = None,
               host: str = "127.0.0.1") -> EtcdCluster:
        """A started cluster in a new directory (added to ``started`` before it starts,
        so a cluster that fails to come up is still removed)."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="etcd-", dir="/tmp")), size, tls, host)
        if started is not None:
            started.append(cluster)
        cluster.start()
        return cluster

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> None:
        scheme = "https" if self.tls else "http"
        for n in range(self.size):
            self.members.append(Member(f"m{n}", f"{scheme}://{self.host}:{free_port()}",
                                       f"http://127.0.0.1:{free_port()}", self.root / f"m{n}",
                                       self.root / f"m{n}.log"))
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            assert ETCD is not None
            argv = [ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
                    "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
                    "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.root.name, "--pre-vote=true",
                    "--heartbeat-interval", "100", "--election-timeout", "1000"]
            if self.tls:
                argv += ["--cert-file", str(self.tls / "server.pem"), "--key-file", str(self.tls / "server-key.pem"),
                         "--client-cert-auth", "--trusted-ca-file", str(self.tls / "ca.pem")]
            member.argv = argv
            self._spawn(member)
        for member in self.members:
            wait_for(lambda member=member: self.healthy(member), timeout=30, what=f"etcd {member.name} healthy")

    @staticmethod
    def _spawn(member: Member) -> None:
        with open(member.log, "ab") as log:
            member.process = subprocess.Popen(member.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def restart(self, n: int) -> None:
        """The member killed (SIGKILL) and started again on its data: it forgets the auth
        tokens it gave (etcd's simple tokens live in memory)."""
        self.kill(n)
        member = self.members[n]
        self._spawn(member)
        wait_for(lambda: self.healthy(member), timeout=30, what=f"etcd {member.name} healthy again")

    def healthy(self, member: Member) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls / "ca.pem"))
            context.load_cert_chain(self.tls / "client.pem", self.tls / "client-key.pem")
        try:
            with urllib.request.urlopen(member.client_url + "/health", timeout=1, context=context) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except OSError:
            return False

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def pause(self, n: int) -> None:
        assert self.members[n].process is not None
        self.members[n].process.send_signal(signal.SIGSTOP)

    def resume(self, n: int) -> None:
        assert self.members[n].process is not None
        self.members[n].process.send_signal(signal.SIGCONT)

    def leader(self) -> int:
        """The index of the member that leads the raft group now (asked of a live member)."""
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            try:
                status = etcd_call(member.client_url, "maintenance/status", {})
            except httpx.HTTPError:
                continue
            ids = {int(etcd_call(m.client_url, "maintenance/status", {})["header"]["member_id"]): n
                   for n, m in enumerate(self.members) if m.process is not None and m.process.poll() is None}
            if int(status.get("leader", 0)) in ids:
                return ids[int(status["leader"])]
        raise AssertionError("no etcd member knows a leader")

    def kill(self, n: int) -> None:
        """The member dies (SIGKILL); the others keep their quorum."""
        process = self.members[n].process
        assert process is not None
        process.kill()
        process.wait()

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)
                member.process.kill()
                member.process.wait()


LEDGER_SCRIPT = """#!/bin/sh
# A fleet instance: says when it starts and stops, in the shared ledger.
entry() { echo "$1 $HIVE_FLEET_INSTANCE $HIVE_FLEET_HIVE $$ $HIVE_FLEET_TOKEN $(date +%s%N)" >> "$LEDGER"; }
trap 'entry stop; kill $child 2>/dev/null; exit 0' TERM INT
entry start
sleep 100000 &
child=$!
wait $child
"""


@dataclass
class Fleet:
    root: Path
    ledger: Path
    script: Path
    daemons: dict[str, DaemonProcess] = field(default_factory=dict)
    prefixes: dict[str, list[str]] = field(default_factory=dict)  # hive -> argv prefix (its namespace)
    patience: float = 30.0  # seconds ``wait`` gives a condition
    killed: dict[int, int] = field(default_factory=dict)  # pid -> when it was killed (ns)

    @classmethod
    def create(cls) -> Fleet:
        root = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
        script = root / "instance.sh"
        script.write_text(LEDGER_SCRIPT)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return cls(root, root / "ledger", script)

    def close(self) -> None:
        """Stop every daemon and kill what is left of its instances; remove the files."""
        for hive_id, daemon in self.daemons.items():
            if daemon.alive():
                daemon.stop()
            for pid in self.instance_pids(hive_id):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it ended between the listing and the kill
            shutil.rmtree(daemon.home, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def start_hive(self, hive_id: str, endpoints: list[str], *, home: Path | None = None, more_config: str = "",
                   argv_prefix: list[str] | None = None, **settings: Any) -> DaemonProcess:
        """A daemon whose config.toml has the fleet table of ``settings`` (and ``more_config``),
        run behind ``argv_prefix`` (``ip netns exec NS``), now and at each restart."""
        if argv_prefix:
            self.prefixes[hive_id] = argv_prefix
        home = home or Path(tempfile.mkdtemp(prefix=f"hv-{hive_id}-", dir="/tmp"))
        table = {"endpoints": endpoints, "hive_id": hive_id, "lease_ttl": 3, "capacity": 10, **settings}
        lines = [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
        labels = table.get("labels") or {}
        text = "[plugins.fleet]\n[plugins.fleet.settings]\n" + "\n".join(lines) + "\n"
        if labels:
            text += "[plugins.fleet.settings.labels]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in labels.items()) + "\n"
        (home / "config.toml").write_text(text + more_config)
        return self.restart_hive(hive_id, home)

    def restart_hive(self, hive_id: str, home: Path) -> DaemonProcess:
        """A daemon on ``home``, once its hive is registered in the fleet."""
        daemon = start_daemon(home, env={"LEDGER": str(self.ledger)}, argv_prefix=self.prefixes.get(hive_id))
        self.daemons[hive_id] = daemon
        wait_for(lambda: self.registered(daemon, hive_id), timeout=30, what=f"{hive_id} registered")
        return daemon

    @staticmethod
    def registered(daemon: DaemonProcess, hive_id: str) -> bool:
        try:
            with BlockingClient(daemon.socket, timeout=30) as client:
                return hive_id in client.plugin_call("fleet", "status")["hives"]
        except Unavailable:
            return False  # the plugin is still starting

    def service(self, name: str, replicas: int, stop_grace: str = "1s", **extra: Any) -> dict[str, Any]:
        """A fleet service of ledger instances. ``stop_grace``: how long an instance has to
        write its stop line before SIGKILL (a copy killed first has no end in the ledger)."""
        return {"name": name, "replicas": replicas, **extra,
                "config": {"runner": {"type": "script", "script": {"run": f"exec {self.script}"}},
                           "stop_grace": stop_grace}}

    def instance_pids(self, hive_id: str) -> list[int]:
        """The live instances of ``hive_id`` in this fleet (by its ledger: a bench or another
        suite may run hives of the same names at the same time)."""
        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                env = process.environ()
                if (env.get("HIVE_FLEET_HIVE") == hive_id and env.get("LEDGER") == str(self.ledger)
                        and process.status() != psutil.STATUS_ZOMBIE):
                    found.append(process.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def kill_hive(self, hive_id: str) -> None:
        """The machine dies: its daemon and its instances, at once (SIGKILL)."""
        daemon = self.daemons[hive_id]
        daemon.kill9()
        for pid in self.instance_pids(hive_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed[pid] = time.time_ns()

    def entries(self) -> list[tuple[str, str, str, int, int, int]]:
        if not self.ledger.exists():
            return []
        found = []
        for line in self.ledger.read_text().splitlines():
            kind, instance, hive, pid, token, at = line.split()
            found.append((kind, instance, hive, int(pid), int(token), int(at)))
        return found

    def wait(self, condition: Callable[[], object], what: str) -> None:
        """``wait_for`` with the daemons' logs in the failure, to see why."""
        try:
            wait_for(condition, timeout=self.patience, what=what)
        except AssertionError as exc:
            logs = "\n".join(f"--- {hive}\n{daemon.stderr()[-3000:]}\n{self._status_line(daemon)}"
                             for hive, daemon in self.daemons.items())
            raise AssertionError(f"{exc}\nledger running: {self.running()}\n{logs}\n{self._diagnosis()}") from None

    def _diagnosis(self) -> str:
        """The first live hive's view against the ledger: each assignment whose copies do not
        run exactly where it is placed (one line each), and the live hives it knows."""
        running = self.running()
        for hive, daemon in self.daemons.items():
            if not daemon.alive():
                continue
            try:
                with BlockingClient(daemon.socket, timeout=5) as client:
                    status = client.plugin_call("fleet", "status")
            except Exception:  # a diagnostic: try the next hive
                continue
            lines = [f"as {hive} sees it: leader {status['leader']}, live hives {sorted(status['hives'])}"]
            for name, placed in sorted(status["assignments"].items()):
                where = [copy_hive for copy_hive, _pid in running.get(name, [])]
                if where != [placed["hive_id"]]:
                    lines.append(f"  {name}: placed on {placed['hive_id']} (token {placed['token']}"
                                 f"{', draining' if placed['draining'] else ''}), running on {where}")
            lines += [f"  {name}: running on {running[name]}, placed nowhere"
                      for name in sorted(set(running) - set(status["assignments"]))]
            return "\n".join(lines)
        return "(no live hive answered)"

    @staticmethod
    def _status_line(daemon: DaemonProcess) -> str:
        """The plugin's view, to tell a watch that fell behind from an agent that is stuck."""
        if not daemon.alive():
            return "(daemon not running)"
        try:
            with BlockingClient(daemon.socket, timeout=5) as client:
                status = client.plugin_call("fleet", "status")
        except Exception as exc:  # a diagnostic: whatever happens, the test's own error is raised
            return f"(no status: {exc})"
        return json.dumps({key: status[key] for key in ("revision", "lease", "fenced", "leader", "running_here",
                                                        "problems")} | {"services": sorted(status["services"]),
                                                                        "assignments": sorted(status["assignments"])})

    def running(self) -> dict[str, list[tuple[str, int]]]:
        """Instance -> [(hive, pid)] of the copies the ledger says run now, and that do run
        (a copy a stop killed before it wrote its stop line, on a loaded machine, is gone)."""
        live: dict[int, tuple[str, str, int]] = {}
        for kind, instance, hive, pid, _token, at in self.entries():
            if kind == "start":
                live[pid] = (instance, hive, at)
            else:
                live.pop(pid, None)
        for pid in list(live):
            # A pid killed before this copy started is a number used again (pid_max is
            # small and other work starts processes too), not this copy.
            if self.killed.get(pid, -1) >= live[pid][2] or not _alive(pid):
                live.pop(pid, None)
        found: dict[str, list[tuple[str, int]]] = {}
        for pid, (instance, hive, _at) in live.items():
            found.setdefault(instance, []).append((hive, pid))
        return found

    def overlaps(self) -> list[str]:
        """Two copies of one instance alive at the same moment, from the ledger's times."""
        spans: list[list[Any]] = []  # [instance, hive, token, start, end, pid]; a pid may come back
        current: dict[int, list[Any]] = {}
        now = time.time_ns()
        for kind, instance, hive, pid, token, at in self.entries():
            if kind == "start":
                current[pid] = [instance, hive, token, at, now, pid]
                spans.append(current[pid])
            elif pid in current:
                current.pop(pid)[4] = at
        for span in spans:
            killed = self.killed.get(span[5])
            if killed is not None and span[3] <= killed:  # else the pid was used again after the kill
                span[4] = min(span[4], killed)
        found = []
        latest: dict[str, list[Any]] = {}  # instance -> the copy that ends last so far
        for span in sorted(spans, key=lambda span: (span[0], span[3])):
            before = latest.get(span[0])
            if before is not None and span[3] < before[4]:
                # A copy with no stop line that no longer runs ended unseen (SIGKILLed
                # before its TERM trap wrote it): said, to tell it from a real overlap.
                unseen = " (no stop line, gone now)" if before[4] == now and not _alive(before[5]) else ""
                found.append(f"{span[0]}: {before[1]} (token {before[2]}, pid {before[5]}) until {before[4]}"
                             f"{unseen}, {span[1]} (token {span[2]}, pid {span[5]}) from {span[3]}")
            if before is None or span[4] > before[4]:
                latest[span[0]] = span
        return found


def etcd_call(endpoint: str, path: str, body: dict[str, Any], token: str = "") -> dict[str, Any]:
    """One request to etcd's JSON gateway, from the test's side (as the user of ``token``)."""
    answer = httpx.post(f"{endpoint}/v3/{path}", json=body, timeout=10,
                        headers={"Authorization": token} if token else None)
    answer.raise_for_status()
    found: dict[str, Any] = answer.json()
    return found


def make_certificates(directory: Path) -> Path:
    """A CA, a certificate for the members (127.0.0.1) and one for clients, made with the
    openssl command (EC keys: quick); the directory."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not installed: run scripts/ci-etcd.sh"
    directory.mkdir(parents=True, exist_ok=True)

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1", "-subj", "/CN=fleet test CA")
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        run("req", *key, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return directory


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def simulated_hive(endpoint: str, hive_id: str, *, capacity: int, prefix: str = "/hive/fleet/", ttl: int = 60) -> int:
    """A hive record bound to a lease the test holds (nothing runs its instances); its lease id."""
    lease = int(etcd_call(endpoint, "lease/grant", {"TTL": str(ttl)})["ID"])
    record = {"hive_id": hive_id, "lease": lease, "capacity": capacity, "runners": ["script"], "labels": {},
              "scheduler": False}
    etcd_call(endpoint, "kv/put", {"key": b64(f"{prefix}hives/{hive_id}"), "value": b64(json.dumps(record)),
                                   "lease": str(lease)})
    return lease


def assignments(endpoint: str, prefix: str = "/hive/fleet/") -> dict[str, str]:
    """Instance (``service/index``) -> hive id, as etcd holds them now."""
    start = f"{prefix}assign/"
    end = start[:-1] + chr(ord(start[-1]) + 1)
    answer = etcd_call(endpoint, "kv/range", {"key": b64(start), "range_end": b64(end)})
    return {base64.b64decode(kv["key"]).decode().removeprefix(start): json.loads(base64.b64decode(kv["value"]))["hive_id"]
            for kv in answer.get("kvs", [])}
