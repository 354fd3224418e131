"""Blue-green rollouts of docker and podman services behind the real proxy: each colour's
generation is its own container (``<name>.blue``, ``<name>.green``), and a docker service
rolled out 20 times under continuous load fails no request; a killed daemon's green
container is stopped by the next daemon."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from hive_client import BlockingClient, RolloutStarted
from tests.engines import IMAGE, require_engine
from tests.proxy.conftest import Proxy, free_port, write_yaml
from tests.proxy.test_blue_green import _reload_quietly, load, started
from tests.support import start_daemon, wait_for

# busybox httpd serves what the container's start wrote: its host port (its colour's). The
# shell (PID 1) ends on SIGTERM at once (PID 1 has no default handler in a container).
_SERVE = ("mkdir -p /www && echo ok > /www/health && echo web-$PORT > /www/index.html"
          " && cp /www/index.html /www/load; trap 'kill $!; exit 0' TERM;"
          " httpd -f -p 127.0.0.1:$PORT -h /www & wait")


def container_yaml(engine: str) -> str:
    blue, green = free_port(), free_port()
    return f"""
  web:
    runner:
      type: {engine}
      {engine}:
        image: {IMAGE}
        network_mode: host  # (the CI's dockerd has no default bridge)
        environment: {{PORT: "{{{{runtime.port.http}}}}"}}
        command: [sh, -c, "{_SERVE}"]
    stop_grace: 5s
    rollout: {{type: blue-green, blue-green: {{ports: {{http: {{blue: {blue}, green: {green}}}}}, drain: 5s, healthy_duration: 0s, timeout: 30s}}}}
    healthcheck: {{type: http, http: {{port: "{{{{runtime.port.http}}}}", path: /health, interval: 0.1s, retries: 1}}}}
    proxy: {{path: /web, strip_prefix: true}}
"""


def containers(engine: str) -> set[str]:
    listed = subprocess.run([engine, "ps", "--format", "{{.Names}}", "--filter", "label=hive.fqn=p:web"],
                            capture_output=True, text=True, timeout=60, check=True)
    return set(listed.stdout.split())


@pytest.mark.parametrize("engine", ["podman"])
def test_each_generation_is_a_container_of_its_colour(proxy: Proxy, tmp_path: Path, engine: str) -> None:
    require_engine(engine)
    project = write_yaml(tmp_path / "p", container_yaml(engine))
    with started(proxy, project) as client:
        blue = client.get_service_status("p:web")
        assert containers(engine) == {"hive-p.web.blue"}
        assert proxy.get("/web/")[1] == f"web-{blue.ports['http']}\n".encode()
        outcomes = client.restart_service("p:web")
        assert [o.result for o in outcomes] == ["done"], outcomes
        green = client.get_service_status("p:web")
        assert (green.generation, green.color) == (2, "green")
        assert green.container_id != blue.container_id
        assert containers(engine) == {"hive-p.web.green"}  # blue's container is gone
        assert proxy.get("/web/")[1] == f"web-{green.ports['http']}\n".encode()
        client.stop_service("p:web")
    assert containers(engine) == set()


def test_twenty_rollouts_of_a_docker_service_under_load_fail_no_request(proxy: Proxy, tmp_path: Path) -> None:
    require_engine("docker")
    project = write_yaml(tmp_path / "p", container_yaml("docker"))
    with started(proxy, project) as client, load(proxy) as (failures, served):
        ids = {client.get_service_status("p:web").container_id}
        for number in range(2, 22):
            before = served[0]
            outcomes = client.restart_service("p:web")
            assert [o.result for o in outcomes] == ["done"], outcomes
            info = client.get_service_status("p:web")
            color = "blue" if number % 2 else "green"
            assert (info.generation, info.color) == (number, color)
            assert info.container_id not in ids
            ids.add(info.container_id)
            assert containers("docker") == {f"hive-p.web.{color}"}
            assert served[0] > before  # requests flowed during each rollout
    assert failures == []
    with proxy.client() as client:
        client.stop_service("p:web")


def test_a_green_container_left_by_a_killed_daemon_is_stopped_by_the_next(proxy: Proxy, tmp_path: Path,
                                                                          hive_env: Path) -> None:
    """The daemon is killed (SIGKILL) while green starts: the next one adopts blue's
    container and stops green's (found by its label and Hive's environment marker)."""
    require_engine("podman")
    project = write_yaml(tmp_path / "p", container_yaml("podman"))
    original = (project / "hive.yaml").read_text()
    with started(proxy, project) as client:
        blue = client.get_service_status("p:web")
        # The next generation never becomes healthy (no /health): the rollout waits.
        (project / "hive.yaml").write_text(original.replace("echo ok > /www/health && ", ""))
        with BlockingClient(proxy.daemon.socket, timeout=30) as watcher, \
                watcher.subscribe_events(["rollout_started"], fqn="p:web") as events:
            threading.Thread(target=_reload_quietly, args=(proxy,), daemon=True).start()
            assert isinstance(next(iter(events)), RolloutStarted)
    wait_for(lambda: containers("podman") == {"hive-p.web.blue", "hive-p.web.green"}, timeout=30,
             what="the green container to run beside blue")
    proxy.daemon.kill9()
    (project / "hive.yaml").write_text(original)  # so the next daemon's blue is current
    proxy.daemon = start_daemon(hive_env)
    wait_for(lambda: containers("podman") == {"hive-p.web.blue"}, timeout=60,
             what="the stray green container to be stopped")
    with proxy.client() as client:
        adopted = client.get_service_status("p:web")
        assert (adopted.container_id, adopted.state, adopted.color) == (blue.container_id, "running", "blue")
        client.stop_service("p:web")
