"""Hives in network namespaces on one machine, for the fleet's chaos test and bench.

A bridge in the host's namespace carries ``10.<net>.0.1/16`` (etcd's members listen
there); each hive gets a namespace with a veth pair, ``10.<net>.1.<n>`` on its side and
the other end on the bridge. Cutting a hive's link sets the bridge end down (nothing
passes either way, the daemon's Unix socket still answers the test); healing sets it up.
Needs root and iproute2 (``ip``). Everything is removed by :meth:`Network.remove`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

IP = shutil.which("ip")


def _ip(*argv: str) -> None:
    assert IP is not None
    subprocess.run([IP, *argv], check=True, capture_output=True)


def usable() -> str:
    """Why namespaces cannot be made here ("" when they can)."""
    if IP is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


@dataclass
class Network:
    tag: str  # a few hex digits: names of this run's links and namespaces
    net: int  # the second octet of its addresses
    namespaces: dict[int, str] = field(default_factory=dict)
    cut: set[int] = field(default_factory=set)

    @classmethod
    def create(cls) -> Network:
        pid = os.getpid()
        network = cls(tag=f"{pid % 0x10000:04x}", net=100 + pid % 100)
        _ip("link", "add", network.bridge, "type", "bridge")
        _ip("addr", "add", f"{network.host_address}/16", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
        return network

    @property
    def bridge(self) -> str:
        return f"hv{self.tag}br"

    @property
    def host_address(self) -> str:
        return f"10.{self.net}.0.1"

    def _veth(self, n: int) -> str:
        return f"hv{self.tag}v{n}"

    def add(self, n: int) -> list[str]:
        """Namespace of hive ``n``; the argv prefix that runs a command in it."""
        namespace = f"hv{self.tag}-{n}"
        _ip("netns", "add", namespace)
        self.namespaces[n] = namespace
        _ip("link", "add", self._veth(n), "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", self._veth(n), "master", self.bridge, "up")
        _ip("-n", namespace, "addr", "add", f"10.{self.net}.1.{n + 1}/16", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        assert IP is not None
        return [IP, "netns", "exec", namespace]

    def cut_link(self, n: int) -> None:
        _ip("link", "set", self._veth(n), "down")
        self.cut.add(n)

    def heal(self, n: int) -> None:
        _ip("link", "set", self._veth(n), "up")
        self.cut.discard(n)

    def remove(self) -> None:
        for namespace in self.namespaces.values():
            subprocess.run([IP or "ip", "netns", "del", namespace], capture_output=True)  # its veth goes too
        subprocess.run([IP or "ip", "link", "del", self.bridge], capture_output=True)
        self.namespaces.clear()
