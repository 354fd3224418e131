"""A real daemon whose proxy listens on a free port, and real upstream services."""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hive_client import BlockingClient
from tests.support import DaemonProcess, free_port, start_daemon, wait_for

APP = Path(__file__).with_name("upstream_app.py")


def service_yaml(name: str, port: int, routes: str, *, extra: str = "") -> str:
    """One upstream_app service (indented for ``services:``)."""
    return f"""
  {name}:
    runner: {{type: script, script: {{run: "exec {sys.executable} {APP} {{{{runtime.port.http}}}} {name}"}}}}
    rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
    healthcheck: {{type: http, http: {{port: "{{{{runtime.port.http}}}}", path: /health, interval: 0.2s, retries: 1}}}}
    proxy: {routes}
{extra}"""


def write_yaml(directory: Path, services: str, head: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hive.yaml").write_text(f'version: "1"\n{head}services:{services}')
    return directory


@dataclass
class Proxy:
    daemon: DaemonProcess
    port: int

    def client(self) -> BlockingClient:
        return BlockingClient(self.daemon.socket, timeout=30)

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def get(self, path: str, **headers: str) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path, headers=dict(headers))
        return status, body

    def wait_serving(self, path: str, expect: bytes, host: str | None = None) -> None:
        """Until ``path`` is answered 200 with ``expect`` in the body (the service is up)."""
        headers = {"Host": host} if host else {}

        def serving() -> bool:
            try:
                status, body = self.get(path, **headers)
            except ConnectionRefusedError:  # the proxy is not listening yet
                return False
            except (ConnectionResetError, http.client.RemoteDisconnected):
                return False  # caddy loading a new config closed it (docs/proxy.md)
            return status == 200 and expect in body

        wait_for(serving, timeout=30, what=f"{path} to be served with {expect!r}")


def serve_four_routes(proxy: Proxy, directory: Path, fallback: str, fallback_probe: str) -> None:
    """Four services behind ``proxy`` in the source ``directory.name``, started and served:
    api (``/api``, its prefix stripped), admin (``/api/admin``), site (host ``site.test``)
    and fallback (routes ``fallback``; ``fallback_probe`` is a path it serves)."""
    services = (
        service_yaml("api", free_port(), "{path: /api, strip_prefix: true}")
        + service_yaml("admin", free_port(), "{path: /api/admin}")
        + service_yaml("site", free_port(), "[{host: Site.Test, path: /}]")
        + service_yaml("fallback", free_port(), fallback)
    )
    write_yaml(directory, services)
    with proxy.client() as client:
        client.add_source(str(directory))
        client.start_source(directory.name)
    # Each app listens a moment after its process starts: wait for all four.
    proxy.wait_serving("/api/x", b"api")
    proxy.wait_serving("/api/admin/x", b"admin")
    proxy.wait_serving("/x", b"site", host="site.test")
    proxy.wait_serving(fallback_probe, b"fallback")


@pytest.fixture
def proxy(hive_env: Path) -> Iterator[Proxy]:
    port = free_port()
    (hive_env / "config.toml").write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{port}"]\nheader_timeout = 1.0\nmax_body = 100000\n'
        "max_header_bytes = 4096\nerror_log_lines = 5\n"
    )
    proxy = Proxy(start_daemon(hive_env), port)
    try:
        yield proxy
    finally:
        proxy.daemon.stop()  # the one running now: a test may have started the next daemon


def caddy_or_skip() -> None:
    """Caddy is installed by scripts/install-caddy.sh; on CI its absence is a failure."""
    import os
    import shutil

    if shutil.which("caddy") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("caddy is not installed: run scripts/install-caddy.sh")
        pytest.skip("caddy is not installed (scripts/install-caddy.sh)")


@pytest.fixture
def caddy_proxy(hive_env: Path) -> Iterator[Proxy]:
    """A daemon whose routes are served by the caddy it starts (``backend = "caddy"``)."""
    caddy_or_skip()
    port = free_port()
    (hive_env / "config.toml").write_text(
        f'[proxy]\nbackend = "caddy"\nlisten = ["127.0.0.1:{port}"]\nerror_log_lines = 5\n'
    )
    proxy = Proxy(start_daemon(hive_env), port)
    try:
        yield proxy
    finally:
        proxy.daemon.stop()
