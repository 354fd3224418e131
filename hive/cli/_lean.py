"""The commonest commands on the standard library alone: the daemon's JSON-lines mode.

The full CLI costs its imports (click, msgspec, the protocol: tens of milliseconds)
on every call; a status asked by a script or a shell prompt needs none of them. This
path answers ``hive status``, ``hive services [SOURCE] [--states]`` and ``hive service
status SERVICE``, each with or without ``--json``, and nothing else; whatever it does
not expect (other options, an error answer, a refused socket, a name it cannot resolve
alone) goes back to the full CLI, which asks again and reports it. Its output is the
full CLI's, byte for byte (tests compare them). On a terminal the full CLI draws with
rich, so only ``--json`` takes this path there.
"""

from __future__ import annotations

# _socket, not socket: the wrapper's enums and selectors cost a few milliseconds to import.
import _socket
import json
import os
import sys

# typing costs a few milliseconds to import; the checker alone needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["dns_row", "format_duration", "lean_main", "log_files_row", "proxy_row", "socket_path"]

EXIT_NOT_RUNNING = 3
TIMEOUT = 30.0  # the full CLI's default --timeout
_SYSTEM_SOCKETS = ("/run/hive/hive.sock", "/var/lib/hive/hive.sock")


def log_files_row(errors: int, dropped: int, cause: str | None) -> str:
    """The status row of log files that failed to be written: how many lines were lost
    to them, and why while it lasts."""
    text = f"{errors} write errors, {dropped} lines not stored (kept in memory only)"
    return f"NOT STORED: {cause}; {text}" if cause else text


def proxy_row(addresses: list[str], errors: list[str]) -> str | None:
    """The status row of the proxy: where it listens, and where it cannot."""
    parts = [", ".join(addresses)] if addresses else []
    parts += [f"NOT LISTENING: {error}" for error in errors]
    return "; ".join(parts) or None


def dns_row(address: str | None, upstream: str | None, error: str | None) -> str | None:
    """The status row of the proxy's DNS responder; None while no file enables it."""
    if error:
        return f"NOT LISTENING: {error}"
    return f"{address} (other names: {upstream})" if address else None


def socket_path(explicit: str | None = None, home: str | None = None) -> str:
    """As hive_client.resolve_socket_path (tests keep them equal), ``explicit`` being
    ``--socket`` and ``home`` ``--home``; os.path, not pathlib, whose import costs more
    than this whole module."""
    if explicit:
        return os.path.expanduser(explicit)
    env_socket = os.environ.get("HIVE_SOCKET")
    if env_socket:
        return os.path.expanduser(env_socket)
    home = home or os.environ.get("HIVE_HOME")
    if home:
        return os.path.join(os.path.expanduser(home), "hive.sock")
    user_socket = os.path.join(os.path.expanduser("~"), ".hive", "hive.sock")
    if not os.path.exists(user_socket):
        for system_socket in _SYSTEM_SOCKETS:
            if os.path.exists(system_socket):
                return system_socket
    return user_socket


class _Refused(Exception):
    """No daemon listens on the socket."""


class _Connection:
    """One JSON-lines connection: a request line out, its answer line back."""

    def __init__(self, path: str) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.pending = b""
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise _Refused from None

    def ask(self, request: dict[str, Any]) -> bytes:
        """The answer line, newline included; OSError when the connection breaks."""
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        data = self.pending
        while b"\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("the daemon closed the connection")
            data += chunk
        line, _, self.pending = data.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self.sock.close()


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
        rows.append(("log files", log_files_row(info["log_write_errors"], info.get("log_lines_dropped", 0),
                                                info.get("log_write_error"))))
    proxy = proxy_row(info.get("proxy_addresses") or [], info.get("proxy_errors") or [])
    if proxy:
        rows.append(("proxy", proxy))
    dns = dns_row(info.get("dns_address"), info.get("dns_upstream"), info.get("dns_error"))
    if dns:
        rows.append(("dns", dns))
    width = max(len(key) for key, _ in rows)
    return "\n".join([f"Hive {info['version']} is running"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]) + "\n"


def _answer(line: bytes, kind: str) -> Any:
    """The answer's payload when it is a ``kind`` answer; None otherwise (an error)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != kind:
        return None
    return message


def _status(conn: _Connection | None, path: str, json_mode: bool) -> str | None:
    if conn is None:
        sys.stdout.write(json.dumps({"running": False, "socket": path}, separators=(",", ":")) + "\n"
                         if json_mode else f"Hive is not running (no daemon on {path})\n")
        sys.stdout.flush()
        sys.exit(EXIT_NOT_RUNNING)
    line = conn.ask({"type": "status"})
    info = _answer(line, "status")
    if info is None:
        return None
    return line.decode() if json_mode else _text(info)


def _payload(line: bytes, kind: str, field: str) -> bytes | None:
    """``{"type":kind,field:X}`` -> ``X``, as the bytes the daemon wrote (the full CLI
    prints the same value through the same encoder); None for any other layout."""
    head = b'{"type":"%s","%s":' % (kind.encode(), field.encode())
    if not (line.startswith(head) and line.endswith(b"}\n")):
        return None
    return line[len(head):-2] + b"\n"


def _services(conn: _Connection, source: str | None, states: bool, json_mode: bool) -> str | bytes | None:
    kind, field = ("states", "states") if states else ("services", "services")
    request: dict[str, Any] = {"type": f"list_{kind}"}
    if source is not None:
        request["source"] = source
    line = conn.ask(request)
    answer = _answer(line, kind)
    if answer is None:
        return None
    if json_mode:
        return _payload(line, kind, field)
    if states:
        return "".join(f"{fqn} {state}\n" for fqn, state in answer["states"].items())
    from ._service_text import NO_SERVICES, SERVICE_COLUMNS, plain_table, reason_lines, service_rows

    listed = answer["services"]
    if not listed:
        return NO_SERVICES + "\n"
    return plain_table(SERVICE_COLUMNS, service_rows(listed)) + "".join(
        line + "\n" for line, _ in reason_lines(listed))


def _resolve(conn: _Connection, text: str) -> str | None:
    """``web`` -> ``proj:web`` when one source has it; None (the full CLI decides) when
    none or several do: it reports the one, and breaks the tie by the project here."""
    if ":" in text:
        return text
    answer = _answer(conn.ask({"type": "list_services"}), "services")
    if answer is None:
        return None
    name = text.partition("#")[0]
    matches = {s["source"] for s in answer["services"] if s["name"] == name}
    return f"{matches.pop()}:{text}" if len(matches) == 1 else None


def _service_status(conn: _Connection, text: str, json_mode: bool) -> str | bytes | None:
    fqn = _resolve(conn, text)
    if fqn is None:
        return None
    line = conn.ask({"type": "get_service_status", "fqn": fqn})
    answer = _answer(line, "service")
    if answer is None:
        return None
    if json_mode:
        return _payload(line, "service", "service")
    from ._service_text import plain_fields, service_fields

    info = answer["service"]
    return plain_fields(info["fqn"], service_fields(info))


class _Form:
    """A command line this path answers."""

    def __init__(self) -> None:
        self.command = ""
        self.positional: list[str] = []
        self.json_mode = False
        self.states = False
        self.socket: str | None = None  # --socket
        self.home: str | None = None  # --home


def _parse(argv: list[str]) -> _Form | None:
    """The form, when this path answers it; None for anything else."""
    form = _Form()
    args = argv
    while args[:1] and args[0].startswith("-"):  # the root options this path knows
        if args[0] == "--json":
            form.json_mode, args = True, args[1:]
        elif args[0] in ("--socket", "--home") and len(args) > 1 and args[1] and not args[1].startswith("-"):
            setattr(form, args[0][2:], args[1])
            args = args[2:]
        else:
            return None
    if args[:2] == ["service", "status"]:
        command, rest, most, least = "service status", args[2:], 1, 1
    elif args[:1] == ["services"]:
        command, rest, most, least = "services", args[1:], 1, 0
    elif args[:1] == ["status"]:
        command, rest, most, least = "status", args[1:], 0, 0
    else:
        return None
    form.command = command
    for arg in rest:
        if arg == "--json":
            form.json_mode = True
        elif arg == "--states" and command == "services":
            form.states = True
        elif arg.startswith("-") or not arg:
            return None
        else:
            form.positional.append(arg)
    if not least <= len(form.positional) <= most:
        return None
    return form


def lean_main(argv: list[str]) -> None:
    """Answer one of this path's commands and exit; return (nothing done) for anything
    else, for text on a terminal (the full CLI draws it with rich), and for anything
    this path does not expect."""
    form = _parse(argv)
    if form is None:
        return
    command, positional, json_mode = form.command, form.positional, form.json_mode
    if not json_mode and sys.stdout.isatty():
        return
    path = socket_path(form.socket, form.home)
    try:
        conn: _Connection | None = _Connection(path)
    except _Refused:
        conn = None
    except OSError:
        return
    out: str | bytes | None = None
    try:
        if command == "status":
            out = _status(conn, path, json_mode)
        elif conn is not None:  # no daemon: the full CLI's error and hint
            if command == "services":
                out = _services(conn, positional[0] if positional else None, form.states, json_mode)
            else:
                out = _service_status(conn, positional[0], json_mode)
    except OSError:
        return
    finally:
        if conn is not None:
            conn.close()
    if out is None:
        return
    if isinstance(out, bytes):
        sys.stdout.buffer.write(out)
    else:
        sys.stdout.write(out)
    sys.stdout.flush()
    sys.exit(0)
