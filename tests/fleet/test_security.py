"""etcd with authentication, a user and roles per hive made by `hive fleet grant`
(core_plugins/fleet/roles.py says which): each hive writes only its own keys, and the
fleet works as before (placement, a rebalance whose drained hive has no right to delete
an assignment). TLS to etcd with a client
certificate, made in the test with openssl."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hive_client import HiveError, Unavailable
from tests.fleet.cli_helpers import as_json
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.harness import b64, etcd_call, make_certificates
from tests.fleet.test_fleet import call, hives_of
from tests.support import DaemonProcess, start_daemon, wait_for

PREFIX = "/hive/fleet/"


def token(endpoint: str, user: str, password_file: Path) -> str:
    password = password_file.read_text().splitlines()[0]
    return str(etcd_call(endpoint, "auth/authenticate", {"name": user, "password": password})["token"])


def grant(through: DaemonProcess, hive_id: str, fleet: Fleet, *flags: str) -> dict[str, Any]:
    """``hive fleet grant`` (etcd's authentication still off); the hive's fleet settings."""
    path = fleet.root / f"{hive_id}.password"
    result = as_json(through, "fleet", "grant", hive_id, *flags, "--password-file", str(path))
    assert result["user"] == "created" and result["password_file"] == str(path)
    return {"username": hive_id, "password_file": str(path)}


def test_each_hive_writes_only_its_own_keys(etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    endpoint = etcd.endpoints[0]
    # The users are made before etcd's authentication is on, through h0 (no user yet).
    # h0 leads and takes commands (no room of its own); h1 and h2 only run instances.
    h0 = fleet.start_hive("h0", etcd.endpoints, capacity=0)
    users = {"h0": grant(h0, "h0", fleet, "--scheduler", "--admin"), "h1": grant(h0, "h1", fleet),
             "h2": grant(h0, "h2", fleet)}
    # A hive given its user while authentication is still off runs (the order of a
    # migration: users, hives' settings, then authentication on).
    h1 = fleet.start_hive("h1", etcd.endpoints, capacity=2, scheduler=False, **users["h1"])
    root = fleet.root / "root.password"
    root.write_text("root-pw\n")
    assert as_json(h0, "fleet", "auth", "enable", "--root-password-file", str(root))["auth"] is True
    h0.stop()
    h0 = fleet.start_hive("h0", etcd.endpoints, home=h0.home, capacity=0, **users["h0"])
    call(h0, "apply", services=[fleet.service("web", 2)])
    fleet.wait(lambda: hives_of(fleet) == {"h1": 2}, "web on h1 twice (the only hive with room)")

    # h1's user may write its own record, and nothing else of the fleet.
    as_h1 = token(endpoint, "h1", fleet.root / "h1.password")
    etcd_call(endpoint, "kv/range", {"key": b64(PREFIX + "services/web")}, as_h1)  # reading is allowed
    for key in ("hives/h0", "services/evil", "assign/web/9", "leader"):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            etcd_call(endpoint, "kv/put", {"key": b64(PREFIX + key), "value": b64("x")}, as_h1)
        assert "permission denied" in refused.value.response.text, key
    with pytest.raises(HiveError, match="permission denied"):
        call(h1, "apply", services=[fleet.service("job", 1)])

    # A rebalance onto a hive that joined later: h1 stops the instance and says so in its
    # own record; the leader (allowed to) deletes the assignment and places it on h2.
    fleet.start_hive("h2", etcd.endpoints, capacity=2, scheduler=False, **users["h2"])
    assert len(call(h0, "rebalance")["moves"]) == 1
    fleet.wait(lambda: hives_of(fleet) == {"h1": 1, "h2": 1}, "one web instance moved to h2")
    assert fleet.overlaps() == []
    assert call(h1, "status")["problems"] == {}

    # h2's user revoked while it runs web-1: its lease stays (etcd 3.4 renews it without
    # checking the user; revoked now, web-1 could start on h1 before h2 has stopped it).
    revoked = as_json(h0, "fleet", "revoke", "h2", "--root-password-file", str(root))
    assert revoked["changes"] == ["deleted user h2", "deleted role fleet-hive-h2"]
    assert revoked["still_running"] == ["web-1"]
    with pytest.raises(httpx.HTTPStatusError):
        token(endpoint, "h2", fleet.root / "h2.password")
    # Once nothing runs there, revoking again takes the lease: h2 is out, refused, fenced.
    call(h0, "delete", names=["web"])
    fleet.wait(lambda: not hives_of(fleet) and not call(h0, "status")["assignments"], "web stopped everywhere")
    again = as_json(h0, "fleet", "revoke", "h2", "--root-password-file", str(root))
    assert len(again["changes"]) == 1 and again["changes"][0].startswith("revoked the lease"), again
    assert again["still_running"] == []

    def refused_and_fenced() -> bool:
        status = call(fleet.daemons["h2"], "status")
        return bool(status["fenced"]) and "authentication failed" in str(status["problems"])

    fleet.wait(lambda: "h2" not in call(h0, "status")["hives"], "h2 out of the fleet")
    fleet.wait(refused_and_fenced, "h2 fenced, saying etcd refuses its user")
    assert fleet.overlaps() == []


def test_a_restarted_member_forgets_tokens_and_the_hive_authenticates_again(
        etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet) -> None:
    """A watch etcd refuses for its token comes back as a cancel on a stream that stays
    open and silent: the hive's view of the fleet froze (it used to)."""
    etcd = etcd_cluster(1)
    admin = fleet.start_hive("adm", etcd.endpoints, capacity=0, scheduler=False)  # takes the commands
    users = {"h1": grant(admin, "h1", fleet, "--scheduler", "--admin")}
    root = fleet.root / "root.password"
    root.write_text("root-pw\n")
    as_json(admin, "fleet", "auth", "enable", "--root-password-file", str(root))
    h1 = fleet.start_hive("h1", etcd.endpoints, capacity=2, **users["h1"])
    call(h1, "apply", services=[fleet.service("web", 1)])
    fleet.wait(lambda: hives_of(fleet) == {"h1": 1}, "web on h1")

    etcd.restart(0)
    call(h1, "apply", services=[fleet.service("job", 1)])
    fleet.wait(lambda: hives_of(fleet) == {"h1": 2}, "job on h1 too (its watch sees it)")
    assert call(h1, "status")["problems"] == {}


def test_tls_to_etcd_with_a_client_certificate(etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet) -> None:
    certificates = make_certificates(fleet.root / "tls")
    etcd = etcd_cluster(1, tls=certificates)
    assert all(endpoint.startswith("https://") for endpoint in etcd.endpoints)
    tls = {"ca_file": str(certificates / "ca.pem"), "cert_file": str(certificates / "client.pem"),
           "key_file": str(certificates / "client-key.pem")}
    daemon = fleet.start_hive("h0", etcd.endpoints, **tls)
    call(daemon, "apply", services=[fleet.service("web", 1)])
    fleet.wait(lambda: hives_of(fleet) == {"h0": 1}, "web running through TLS")

    # Without the CA, the members' certificate is not trusted: the hive says why.
    stranger = fleet.root / "stranger"
    stranger.mkdir()
    (stranger / "config.toml").write_text(
        f'[plugins.fleet]\n[plugins.fleet.settings]\nendpoints = ["{etcd.endpoints[0]}"]\nhive_id = "h9"\n')
    other = start_daemon(stranger)
    fleet.daemons["h9"] = other

    def refused_on_the_certificate() -> bool:
        try:
            problems = call(other, "status")["problems"]
        except Unavailable:
            return False  # the plugin is still starting
        return "certificate" in str(problems.get("registration", {})).lower()

    wait_for(refused_on_the_certificate, timeout=30, what="h9's registration failing on the certificate")
    assert "h9" not in call(daemon, "status")["hives"]


def test_settings_name_a_missing_file_and_unpaired_keys(tmp_path: Path) -> None:
    from core_plugins.fleet.model import FleetSettings

    with pytest.raises(ValueError, match="password_file"):
        FleetSettings(endpoints=["http://127.0.0.1:2379"], username="h0")
    with pytest.raises(ValueError, match=r"ca_file .* cannot be read"):
        FleetSettings(endpoints=["https://127.0.0.1:2379"], ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ValueError, match="https://"):
        FleetSettings(endpoints=["http://127.0.0.1:2379"], ca_file=str(tmp_path / "ca.pem"))



def test_the_documented_etcdctl_recipe_is_what_roles_grants() -> None:
    from core_plugins.fleet.roles import etcdctl

    docs = (Path(__file__).parents[2] / "docs" / "fleet.md").read_text()
    for hive_id, role in (("web-01", True), ("web-02", False)):
        block = "\n".join(etcdctl("/hive/fleet/", hive_id, scheduler=role, admin=role))
        assert block in docs, block
