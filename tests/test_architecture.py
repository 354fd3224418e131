"""The shape of the code: the import rule, the public surfaces, generated code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# ARCHITECTURE §1: core_plugins → hive → runners → hive_client, never backwards.
ALLOWED = {
    "hive_client": {"hive_client"},
    "runners": {"runners", "hive_client"},
    "hive": {"hive", "runners", "hive_client"},
    "core_plugins": {"core_plugins", "hive", "hive_client"},
}
THIRD_PARTY = {
    "hive_client": {"anyio", "msgspec", "sniffio"},
    "runners": {"anyio", "psutil", "msgspec",
                "httpx",  # the container engines' HTTP APIs over their Unix sockets
                "yaml"},  # a compose file, read to give compose one service's view of it
    "hive": {"anyio", "msgspec", "aiosqlite", "psutil", "click", "rich", "yaml", "uvloop",
             "dotenv",  # .env files by python-dotenv's rules
             "httptools",  # the proxy's HTTP/1.1 parser
             "h2",  # the grpc health check's HTTP/2
             "httpx",  # the Caddy backend's admin API over its Unix socket (loaded with the proxy)
             "watchfiles",  # `hive up --watch` (CLI side)
             "textual"},  # `hive ui` (the [ui] extra, imported only by that command)
    "core_plugins": {"anyio", "msgspec", "websockets", "psutil",
                     "httpx",  # the fleet plugin's etcd client
                     "prometheus_client"},  # the metrics plugin's exposition (the [metrics] extra)
}
PROJECT = set(ALLOWED)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_rule(package: str) -> None:
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            if module in stdlib or module == "__future__":
                continue
            if module in PROJECT and module not in ALLOWED[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {package} must not import {module}")
            elif module not in PROJECT and module not in THIRD_PARTY[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {package} may not depend on {module}")
    assert not problems, "\n".join(problems)


def test_hive_client_public_surface() -> None:
    import hive_client

    for name in hive_client.__all__:
        assert getattr(hive_client, name) is not None, name
    # Private modules stay private: nothing public is named with an underscore.
    assert not [n for n in hive_client.__all__ if n.startswith("_") and n != "__version__"]
    # The client surface a user needs.
    for name in ("DaemonClient", "BlockingClient", "HiveError", "DaemonError", "ServiceInfo",
                 "LogLine", "DaemonEvent", "resolve_socket_path", "parse_fqn"):
        assert name in hive_client.__all__


def test_plugin_surface() -> None:
    """What core plugins are written against (docs/plugins.md), and the runner contract."""
    import hive.plugin
    import runners.base

    for module in (hive.plugin, runners.base):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    assert {"CorePlugin", "NoSettings", "DaemonClient", "DaemonEvent", "FAILURE_LIMIT"} <= set(hive.plugin.__all__)
    assert {"Runner", "ServiceHandle", "RunSpec", "ExitStatus", "RunnerError"} <= set(runners.base.__all__)


def test_protocol_module_surface() -> None:
    from hive_client import protocol

    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    for name in ("Request", "Response", "encode_frame", "FrameReader", "PROTOCOL_VERSION"):
        assert name in protocol.__all__


def test_every_request_has_exactly_one_route() -> None:
    from hive.daemon.dispatch import ROUTES
    from hive_client._messages import Hello, RequestMessage

    requests = set(RequestMessage.__args__) - {Hello}  # the connection answers hello itself
    assert set(ROUTES) == requests
    for request_type, route in ROUTES.items():
        assert route.request is request_type
        assert (route.unary is None) != (route.stream is None)


def test_a_route_refuses_another_request_type() -> None:
    from hive.daemon.dispatch import ROUTES
    from hive_client import protocol as p

    handler = ROUTES[p.Ping].unary
    assert handler is not None
    with pytest.raises(TypeError, match="the Ping route was given a Status"):
        handler(None, p.Status())  # refused before the context is looked at


def test_blocking_methods_are_generated_from_async() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_sync_client_and_cli_do_not_load_anyio_or_the_daemon() -> None:
    code = (
        "import sys, hive.cli, hive_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('anyio', 'aiosqlite', 'rich', 'psutil') "
        "or m.startswith('hive.daemon')]; print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_version_matches_pyproject() -> None:
    import tomllib

    import hive_client

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == hive_client.__version__
