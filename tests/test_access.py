"""Only the daemon's user (and root) may talk to it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hive_client.protocol import (
    Error,
    FrameReader,
    Ping,
    decode_envelope,
    decode_response,
    encode_frame,
)
from tests.support import start_daemon

# The child runs as another user, who cannot read this project's virtualenv: it speaks
# the protocol with the system Python's stdlib only and hands the raw answer back.
CHILD = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit(0)
sock.sendall(bytes.fromhex(sys.argv[2]))
data = b""
while True:
    chunk = sock.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.hex())
"""
SYSTEM_PYTHON = "/usr/bin/python3"


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")


def _run_as(user: pwd.struct_passwd, socket_path: Path) -> str:
    """What the daemon answers a ping from ``user``: 'EACCES' or the decoded answer."""
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run a child as another user")

    def demote() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", CHILD, str(socket_path), encode_frame(1, Ping()).hex()],
        capture_output=True, text=True, timeout=30, preexec_fn=demote, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip()
    if answer == "EACCES":
        return answer
    reader = FrameReader()
    reader.feed(bytes.fromhex(answer))
    payload = reader.next_payload()
    assert payload is not None, "the daemon sent no complete frame"
    msg_id, raw = decode_envelope(payload)
    message = decode_response(raw)
    assert isinstance(message, Error), message
    return f"{msg_id} {message.code} {message.message}"


def test_other_uid_is_refused_by_peer_credentials(hive_env: Path) -> None:
    """Even when the file system lets it in, SO_PEERCRED keeps another uid out."""
    user = _nobody()
    public = Path(tempfile.mkdtemp(prefix="hvp-", dir="/tmp"))
    try:
        public.chmod(0o755)
        socket_path = public / "hive.sock"
        (hive_env / "config.toml").write_text(f'[daemon]\nsocket = "{socket_path}"\n')
        daemon = start_daemon(hive_env)
        try:
            socket_path.chmod(0o666)
            answer = _run_as(user, socket_path)
            assert answer.startswith("0 PERMISSION_DENIED")
            assert f"uid {user.pw_uid} may not use this daemon" in answer
            assert daemon.alive()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_other_uid_cannot_reach_the_private_socket(daemon) -> None:
    user = _nobody()
    # The default home is 0700: the kernel refuses before the daemon sees anything.
    assert _run_as(user, daemon.socket) == "EACCES"
