"""``proxy.debug: true`` in a hive.yaml: each request to that file's routes is logged (the
embedded proxy: one line in the daemon's log; caddy: its access log)."""

from __future__ import annotations

from pathlib import Path

from tests.proxy.conftest import Proxy, free_port, service_yaml, write_yaml
from tests.support import wait_for


def _start(proxy: Proxy, tmp_path: Path) -> None:
    write_yaml(tmp_path / "quiet", service_yaml("q", free_port(), "{path: /quiet}"))
    write_yaml(tmp_path / "loud", service_yaml("l", free_port(), "{path: /loud}"), "proxy: {debug: true}\n")
    with proxy.client() as client:
        for name in ("quiet", "loud"):
            client.add_source(str(tmp_path / name))
            client.start_source(name)
    proxy.wait_serving("/quiet/x", b"q")
    proxy.wait_serving("/loud/x", b"l")


def test_debug_logs_each_request_of_its_files_routes(proxy: Proxy, tmp_path: Path) -> None:
    _start(proxy, tmp_path)
    assert proxy.get("/quiet/first")[0] == 200
    assert proxy.get("/loud/second")[0] == 200
    log = proxy.daemon.stderr_path
    wait_for(lambda: f"proxy: GET 127.0.0.1:{proxy.port}/loud/second -> loud:l at 127.0.0.1:" in log.read_text(),
             timeout=30, what="the debug line")
    assert "/loud/second -> loud:l at 127.0.0.1:" in log.read_text()
    assert "/quiet/first" not in log.read_text()  # logged in order: it would be there by now


def test_debug_turns_on_caddys_access_log(caddy_proxy: Proxy, tmp_path: Path) -> None:
    _start(caddy_proxy, tmp_path)
    assert caddy_proxy.get("/loud/second")[0] == 200
    access = caddy_proxy.daemon.home / "caddy" / "caddy.log"
    wait_for(lambda: '"uri":"/loud/second"' in access.read_text(), timeout=30, what="caddy's access log line")
