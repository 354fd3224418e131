"""TLS on a file's ``proxy.bind`` with ``proxy.ssl``: the embedded proxy with given
certificate files, caddy with given files or its own local CA. Certificates are made
in the test (openssl)."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.proxy.conftest import Proxy, free_port, service_yaml, write_yaml
from tests.support import run_cli, wait_for


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for ``localhost`` and 127.0.0.1: cert.pem, key.pem."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return directory / "cert.pem"


def tls_project(directory: Path, port: int, ssl_block: str) -> Path:
    make_certificate(directory)
    head = f'proxy: {{bind: "127.0.0.1:{port}", ssl: {ssl_block}}}\n'
    return write_yaml(directory, service_yaml("api", free_port(), "{path: /api, strip_prefix: true}"), head)


def https_get(port: int, path: str, trusted: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(trusted))
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_https(port: int, trusted: Path) -> None:
    def serving() -> bool:
        try:
            return https_get(port, "/api/x", trusted)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    wait_for(serving, timeout=30, what=f"https on {port}")


def start(proxy: Proxy, project: Path) -> None:
    with proxy.client() as client:
        client.add_source(str(project))
        client.start_source("p")


def test_the_embedded_proxy_serves_tls_on_a_files_bind(proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    project = tls_project(tmp_path / "p", port, "{type: files, files: {cert: cert.pem, key: key.pem}}")
    start(proxy, project)
    wait_https(port, project / "cert.pem")
    status, body = https_get(port, "/api/headers", project / "cert.pem")
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert status == 200 and seen["x-forwarded-proto"] == "https"
    proxy.wait_serving("/api/x", b"api")  # [proxy] listen serves plain HTTP as before
    status, _, body = proxy.request("GET", "/api/headers")
    assert json.loads(body)["headers"] and status == 200
    with proxy.client() as client:
        assert sorted(client.status().proxy_addresses) == sorted([f"127.0.0.1:{proxy.port}", f"127.0.0.1:{port}"])


def test_the_embedded_proxy_says_why_it_cannot_serve_internal_tls(proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    project = tls_project(tmp_path / "p", port, "{type: internal}")
    start(proxy, project)
    proxy.wait_serving("/api/x", b"api")  # the routes are served on [proxy] listen
    wait_for(lambda: "needs [proxy] backend = \"caddy\"" in proxy.daemon.stderr_path.read_text(), timeout=30,
             what="the daemon to say why")
    with pytest.raises(ConnectionRefusedError):
        https_get(port, "/api/x", project / "cert.pem")


def test_caddy_serves_tls_with_given_files(caddy_proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    project = tls_project(tmp_path / "p", port, "{type: files, files: {cert: cert.pem, key: key.pem}}")
    start(caddy_proxy, project)
    wait_https(port, project / "cert.pem")
    status, body = https_get(port, "/api/headers", project / "cert.pem")
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert status == 200 and seen["x-forwarded-proto"] == "https"
    caddy_proxy.wait_serving("/api/x", b"api")  # and plain HTTP on [proxy] listen


def test_caddy_serves_tls_from_its_local_ca(caddy_proxy: Proxy, tmp_path: Path) -> None:
    port = free_port()
    project = tls_project(tmp_path / "p", port, "{type: internal}")
    start(caddy_proxy, project)
    root = caddy_proxy.daemon.home / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    wait_for(root.exists, timeout=30, what="caddy's local CA")
    wait_https(port, root)  # the certificate is signed by that CA, for localhost
    assert https_get(port, "/api/who", root)[1].startswith(b"api ")


def test_validate_checks_the_ssl_block(tmp_path: Path) -> None:
    project = write_yaml(tmp_path / "p", service_yaml("api", free_port(), "{path: /api}"),
                         'proxy: {bind: "127.0.0.1:9443", ssl: {type: files, files: {cert: cert.pem}}}\n')
    result = run_cli("config", "validate", str(project))
    assert result.returncode != 0
    assert "proxy.ssl.files" in result.stdout + result.stderr and "key" in result.stdout + result.stderr
    (project / "hive.yaml").write_text((project / "hive.yaml").read_text().replace(
        "{type: files, files: {cert: cert.pem}}", "{type: acme, acme: {}}"))
    result = run_cli("config", "validate", str(project))
    assert result.returncode != 0 and "unknown ssl type 'acme'" in result.stdout + result.stderr
