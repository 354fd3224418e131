"""``hive status`` on the standard library alone: the daemon's JSON-lines mode.

The full CLI costs its imports (click, msgspec, the protocol: tens of milliseconds)
on every call; a status asked by a script or a shell prompt needs none of them. This
path answers ``hive status`` and ``hive [--json] status [--json]`` and nothing else;
whatever it does not expect (other options, an error answer, a refused socket) goes
back to the full CLI, which asks again and reports it. Its output is the full CLI's,
byte for byte (tests compare them).
"""

from __future__ import annotations

import json
import os
import socket
import sys

# typing costs a few milliseconds to import; the checker alone needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["format_duration", "lean_status", "socket_path"]

_FORMS = (["status"], ["status", "--json"], ["--json", "status"])
EXIT_NOT_RUNNING = 3
TIMEOUT = 30.0  # the full CLI's default --timeout
_SYSTEM_SOCKETS = ("/run/hive/hive.sock", "/var/lib/hive/hive.sock")


def socket_path() -> str:
    """As hive_client.resolve_socket_path without an explicit path (tests keep them
    equal); os.path, not pathlib, whose import costs more than this whole module."""
    env_socket = os.environ.get("HIVE_SOCKET")
    if env_socket:
        return os.path.expanduser(env_socket)
    home = os.environ.get("HIVE_HOME")
    if home:
        return os.path.join(os.path.expanduser(home), "hive.sock")
    user_socket = os.path.join(os.path.expanduser("~"), ".hive", "hive.sock")
    if not os.path.exists(user_socket):
        for system_socket in _SYSTEM_SOCKETS:
            if os.path.exists(system_socket):
                return system_socket
    return user_socket


def _ask(path: str) -> bytes | None:
    """The status line; b"" when no daemon listens; None for anything else."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return b""
        sock.sendall(b'{"type":"status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        return data
    except OSError:
        return None
    finally:
        sock.close()


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m 15s`` (the full CLI uses this one too: it imports only the standard library)."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _text(info: dict[str, Any]) -> str:
    """As the full CLI prints it when piped."""
    saved = info.get("state_error") is None
    rows = [
        ("pid", str(info["pid"])),
        ("uptime", format_duration(info.get("uptime_secs", 0))),
        ("socket", info.get("socket", "")),
        ("home", info.get("home", "")),
        ("sources", str(info["source_count"])),
        ("services", f"{info['running_services']} running of {info['total_services']}"),
        ("clients", str(info.get("clients", 0))),
        ("state", "saved" if saved else
         f"NOT SAVED ({info.get('state_unsaved', 0)} changes waiting, retrying): {info['state_error']}"),
    ]
    if info.get("state_note"):
        rows.append(("state file", info["state_note"]))
    if info.get("log_write_errors"):
        rows.append(("log files", f"{info['log_write_errors']} write errors (lines dropped)"))
    width = max(len(key) for key, _ in rows)
    return "\n".join([f"Hive {info['version']} is running"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]) + "\n"


def lean_status(argv: list[str]) -> None:
    """Answer ``hive status`` and exit; return (nothing done) for anything else, and on
    a terminal, where the full CLI draws with rich."""
    if argv not in _FORMS:
        return
    json_mode = "--json" in argv
    if not json_mode and sys.stdout.isatty():
        return
    path = socket_path()
    answer = _ask(path)
    if answer is None:
        return
    if not answer:
        if json_mode:
            sys.stdout.write(json.dumps({"running": False, "socket": path}, separators=(",", ":")) + "\n")
        else:
            sys.stdout.write(f"Hive is not running (no daemon on {path})\n")
        sys.stdout.flush()
        sys.exit(EXIT_NOT_RUNNING)
    try:
        info = json.loads(answer)
    except ValueError:
        return
    if not isinstance(info, dict) or info.get("type") != "status":
        return  # an error answer: the full CLI reports it
    sys.stdout.write(answer.decode() if json_mode else _text(info))
    sys.stdout.flush()
    sys.exit(0)
