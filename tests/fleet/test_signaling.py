"""A spawn received through one hive's signaling connection, placed fleet-wide: the
signaling plugin (``placement = "fleet"``) hands it to the fleet plugin through the
daemon's plugin-call API, and it runs on whichever hive has room. Real etcd, real daemons,
the real signaling server process of tests/plugins/signaling_server.py."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hive_client import BlockingClient
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call
from tests.support import free_port, wait_for

SERVER_SCRIPT = Path(__file__).parent.parent / "plugins" / "signaling_server.py"


class SignalingServer:
    """tests/plugins/signaling_server.py as a process: what it receives is in ``log``."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "signaling.log"
        self.process = subprocess.Popen([sys.executable, str(SERVER_SCRIPT), str(self.port), str(self.log)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("listening")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _expect(self, line: str) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == line  # the server prints each, or dies (EOF)

    def send(self, **message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"v": 1, **message}) + "\n")
        self.process.stdin.flush()
        self._expect("sent")

    def received(self, kind: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [m for m in map(json.loads, self.log.read_text().splitlines()) if m.get("type") == kind]

    def answer(self, request_id: str) -> dict[str, Any]:
        wait_for(lambda: any(m.get("request_id") == request_id for m in self.received(kind="spawn_cocoon_result")
                             + self.received(kind="terminate_cocoon_result")),
                 timeout=30, what=f"the answer to {request_id}")
        return next(m for m in self.received("spawn_cocoon_result") + self.received("terminate_cocoon_result")
                    if m.get("request_id") == request_id)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _get(port: int, path: str) -> str:
    """The status line's code and reason, and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        return f"{response.status} {response.reason}\n{response.read().decode()}"
    finally:
        connection.close()


@pytest.fixture
def signaling(fleet: Fleet) -> Iterator[SignalingServer]:
    server = SignalingServer(fleet.root)
    yield server
    server.close()


def test_a_spawn_through_one_hive_runs_where_the_fleet_has_room(
        etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet, signaling: SignalingServer) -> None:
    etcd = etcd_cluster(1)
    # h0 holds the signaling connection and has no room of its own; h1 has room for one.
    table = (f'[plugins.signaling]\n[plugins.signaling.settings]\nurl = "{signaling.url}"\nhive_id = "h0"\n'
             f'placement = "fleet"\nscript_path = "{fleet.script}"\n')
    h0 = fleet.start_hive("h0", etcd.endpoints, capacity=0, more_config=table)
    proxy_port = free_port()
    h1 = fleet.start_hive("h1", etcd.endpoints, capacity=1, more_config=f'[proxy]\nlisten = ["127.0.0.1:{proxy_port}"]\n')
    wait_for(lambda: signaling.received("register"), timeout=30, what="h0 registered with the signaling server")
    wait_for(lambda: len(call(h0, "status")["hives"]) == 2, timeout=30, what="both hives in the fleet")

    signaling.send(type="spawn_cocoon", request_id="r1", cocoon_id="c1", env={"ROLE": "worker"})
    answer = signaling.answer("r1")
    assert (answer["ok"], answer["hive_id"], answer["fqn"]) == (True, "h1", "fleet:cocoon-c1-0"), answer
    fleet.wait(lambda: fleet.running().get("cocoon-c1-0") is not None, "the cocoon running")
    [(hive, pid)] = fleet.running()["cocoon-c1-0"]
    assert hive == "h1"
    # h1 picked its port: $PORT, and /cocoon/c1/ on h1's proxy goes there (nothing listens: 502).
    with BlockingClient(h1.socket, timeout=30) as client:
        port = client.get_service_status("fleet:cocoon-c1-0").ports["http"]
    environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in entry)
    assert (environ["PORT"], environ["COCOON_ID"], environ["ROLE"]) == (str(port), "c1", "worker")
    page = _get(proxy_port, "/cocoon/c1/x")
    assert page.startswith("502 ") and "fleet:cocoon-c1-0" in page, page

    # The fleet is full: refused with the reason, and nothing of it is left to be placed later.
    signaling.send(type="spawn_cocoon", request_id="r2", cocoon_id="c2")
    refused = signaling.answer("r2")
    assert refused["ok"] is False and "no hive took it" in refused["error"], refused
    assert "cocoon-c2" not in call(h0, "status")["services"]
    # An id the fleet cannot name is refused at once.
    signaling.send(type="spawn_cocoon", request_id="r3", cocoon_id="Upper")
    assert "fleet placement" in signaling.answer("r3")["error"]

    signaling.send(type="terminate_cocoon", request_id="r4", cocoon_id="c1")
    assert signaling.answer("r4")["ok"] is True
    fleet.wait(lambda: "cocoon-c1-0" not in fleet.running(), "the cocoon stopped on h1")
    assert fleet.overlaps() == []
