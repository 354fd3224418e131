"""The fleet's settings, the records it keeps in etcd, and where it keeps them.

Keys, under ``prefix`` (default ``/hive/fleet/``):

- ``hives/<hive_id>``: a ``HiveRecord``, bound to the hive's lease (gone when it expires);
- ``services/<name>``: a ``FleetService``, the desired state (no lease: it outlives hives);
- ``assign/<name>/<index>``: an ``Assignment`` of instance ``index`` to a hive, bound to
  that hive's lease, so a dead hive's assignments vanish with its lease and nothing else;
  its create revision is the instance's fencing token;
- ``moves/<name>/<index>``: where ``hive fleet rebalance`` wants a draining instance to go
  (a hive id); the leader places it there and deletes the hint;
- ``leader``: the scheduler's leader (its hive id), bound to the leader's lease.
"""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec

__all__ = ["NAME_PATTERN", "Assignment", "FleetService", "FleetSettings", "HiveRecord", "Keys", "PlaceRequest", "Placement",
           "released_mark"]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,50}$")


class FleetSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    endpoints: list[str]  # etcd client URLs, e.g. ["http://10.0.0.1:2379", ...]
    hive_id: str = ""  # default: the host name
    prefix: str = "/hive/fleet/"
    lease_ttl: int = 3  # seconds
    fence_after: float = 0.5  # of lease_ttl without a renewal: stop every fleet instance
    capacity: int = 10  # fleet instances this hive runs at most
    labels: dict[str, str] = {}
    runners: list[str] = msgspec.field(default_factory=lambda: ["script"])
    scheduler: bool = True  # this hive may lead placement
    source: str = "fleet"  # the SQLite source that holds the instances this hive runs
    request_timeout: float = 0.5  # per member; a failing call tries each
    # etcd with authentication: this hive's user, and a file that holds its password.
    username: str = ""
    password_file: str = ""
    # TLS to etcd (https:// endpoints): the CA that signed the members' certificates, and
    # this hive's client certificate and key (for members started with --client-cert-auth).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("endpoints must list at least one etcd client URL")
        for endpoint in self.endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {endpoint!r} must start with http:// or https://")
        if self.lease_ttl < 2:
            raise ValueError("lease_ttl must be at least 2 s (etcd's leases are whole seconds)")
        if not 0.1 <= self.fence_after <= 0.7:
            raise ValueError("fence_after must be between 0.1 and 0.7 of lease_ttl, to stop before the lease ends")
        if self.request_timeout * 2 > self.lease_ttl * self.fence_after:
            raise ValueError("request_timeout must be at most half of lease_ttl x fence_after, "
                             "or a slow member fences a healthy hive")
        if self.capacity < 0:
            raise ValueError("capacity must not be negative")
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError("prefix must start and end with /")
        if self.hive_id and not NAME_PATTERN.match(self.hive_id):
            raise ValueError(f"hive_id {self.hive_id!r}: lower-case letters, digits, _ and -")
        if bool(self.username) != bool(self.password_file):
            raise ValueError("username and password_file go together (etcd's authentication)")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (a client certificate for etcd)")
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{key} {path!r} does not exist or cannot be read")
        if (self.ca_file or self.cert_file) and not all(e.startswith("https://") for e in self.endpoints):
            raise ValueError("ca_file and cert_file are for https:// endpoints: make every endpoint https://")

    def password(self) -> str:
        """The password in ``password_file`` (its first line)."""
        with open(self.password_file, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")


class HiveRecord(msgspec.Struct, kw_only=True):
    hive_id: str
    lease: int
    capacity: int
    runners: list[str]
    labels: dict[str, str]
    scheduler: bool
    # Drained assignments this hive has stopped (``service/index@mod_revision``): the
    # leader deletes them. Said in the hive's own key, so a hive writes only its own keys.
    released: list[str] = []


def released_mark(service: str, index: int, mod_revision: int) -> str:
    """How a hive's record names a drained assignment it has stopped."""
    return f"{service}/{index}@{mod_revision}"


class FleetService(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A service the fleet keeps ``replicas`` instances of, anywhere it fits."""

    name: str
    config: dict[str, Any]  # the service's hive.yaml table (runner, environment, ...)
    replicas: int = 1
    labels: dict[str, str] = {}  # a hive must carry all of these
    spread: bool = True  # instances on distinct hives while there are enough

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"service name {self.name!r}: lower-case letters, digits, _ and -")
        if self.replicas < 0:
            raise ValueError(f"{self.name}: replicas must not be negative")
        runner = self.config.get("runner")
        if not isinstance(runner, dict) or not isinstance(runner.get("type"), str):
            raise ValueError(f"{self.name}: config.runner.type is required")

    @property
    def runner(self) -> str:
        return str(self.config["runner"]["type"])


class PlaceRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``plugin_call("fleet", "place", ...)``: one instance of a new service, placed
    anywhere in the fleet (the signaling plugin's hand-off of a spawn). Refused if a fleet
    service of that name exists; answered once a hive is assigned, or refused (and
    nothing left) when none is within ``wait`` seconds."""

    name: str
    config: dict[str, Any]  # the service's hive.yaml table
    labels: dict[str, str] = {}
    wait: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.wait <= 60:
            raise ValueError("wait must be between 0 and 60 s")


class Placement(msgspec.Struct, kw_only=True):
    """The answer to a ``place``: where the instance runs, and its fencing token."""

    service: str
    instance: str  # ``<service>-0``
    fqn: str  # ``<source>:<instance>`` on that hive
    hive_id: str
    token: int


class Assignment(msgspec.Struct, kw_only=True):
    service: str
    index: int
    hive_id: str
    drain: bool = False  # a rebalance moves it: the hive stops it, then deletes this key


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hives = prefix + "hives/"
        self.services = prefix + "services/"
        self.assign = prefix + "assign/"
        self.moves = prefix + "moves/"
        self.leader = prefix + "leader"

    def hive(self, hive_id: str) -> str:
        return self.hives + hive_id

    def service(self, name: str) -> str:
        return self.services + name

    def assignment(self, service: str, index: int) -> str:
        return f"{self.assign}{service}/{index}"

    def move(self, service: str, index: int) -> str:
        return f"{self.moves}{service}/{index}"
