"""The proxy cannot listen where it should: ``hive status`` says where and why, the
daemon serves on, and a reload tries again."""

from __future__ import annotations

import socket
from pathlib import Path

from hive_client import BlockingClient
from tests.proxy.conftest import Proxy, service_yaml, write_yaml
from tests.support import free_port, run_cli, start_daemon, wait_for


def test_a_taken_port_is_kept_in_status_and_a_reload_retries(hive_env: Path, tmp_path: Path) -> None:
    taken_port, open_port = free_port(), free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", taken_port))
    taken.listen()
    (hive_env / "config.toml").write_text(f'[proxy]\nlisten = ["127.0.0.1:{taken_port}", "127.0.0.1:{open_port}"]\n')
    daemon = start_daemon(hive_env)
    try:
        write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"))
        with BlockingClient(daemon.socket, timeout=30) as client:
            client.add_source(str(tmp_path / "p"))
            client.start_source("p")
            Proxy(daemon, open_port).wait_serving("/api/x", b"api")  # the other address serves
            error = (f"cannot listen on 127.0.0.1:{taken_port}: Address already in use; "
                     "set [proxy] listen in config.toml, then `hive reload`")
            status = client.status()
            assert (status.proxy_addresses, status.proxy_errors) == ([f"127.0.0.1:{open_port}"], [error])
            client.reload()  # tries again: the same error is not logged again
            assert client.status().proxy_errors == [error]
            assert daemon.stderr().count(f"cannot listen on 127.0.0.1:{taken_port}") == 1
            shown = run_cli("status")
            assert f"127.0.0.1:{open_port}; NOT LISTENING: {error}" in shown.stdout

            taken.close()
            client.reload()
            wait_for(lambda: client.status().proxy_errors == [], timeout=30, what="the proxy to listen on the freed port")
            assert sorted(client.status().proxy_addresses) == sorted(
                [f"127.0.0.1:{taken_port}", f"127.0.0.1:{open_port}"])
            Proxy(daemon, taken_port).wait_serving("/api/x", b"api")
    finally:
        daemon.stop()
        taken.close()
