"""`hive fleet apply|status|hives|services` through the real CLI, real daemons and etcd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.fleet.cli_helpers import as_json, hive
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.test_fleet import call
from tests.support import wait_for


def test_fleet_commands(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet, tmp_path: Path) -> None:
    etcd = etcd_cluster(1)
    first = fleet.start_hive("h0", etcd.endpoints, capacity=2, labels={"zone": "a"})
    second = fleet.start_hive("h1", etcd.endpoints, capacity=2)
    project = tmp_path / "hive.yaml"
    project.write_text(f"""version: "1"
services:
  web:
    runner: {{type: script, script: {{run: "exec {fleet.script}"}}}}
    stop_grace: 1s
    fleet: {{replicas: 2, spread: true}}
  local:
    runner: {{type: script, script: {{run: "exec sleep 1000"}}}}
""")
    applied = hive(first, "fleet", "apply", str(project))
    assert applied.returncode == 0, applied.stderr
    assert "applied 1 fleet services: web" in applied.stdout  # `local` has no fleet block

    fleet.wait(lambda: len(fleet.running()) == 2, "2 web instances running")
    # Any hive shows the whole fleet.
    wait_for(lambda: len(as_json(second, "fleet", "status")["assignments"]) == 2, timeout=30, what="h1 sees both")
    services = as_json(second, "fleet", "services")
    assert [(s["name"], s["replicas"], s["placed"]) for s in services] == [("web", 2, ["h0", "h1"])]
    hives = as_json(second, "fleet", "hives")
    assert [(h["hive_id"], h["instances"], h["labels"]) for h in hives] == [("h0", 1, {"zone": "a"}), ("h1", 1, {})]

    table = hive(second, "fleet", "hives")
    assert table.returncode == 0 and "h0" in table.stdout and "1/2" in table.stdout and "zone=a" in table.stdout
    table = hive(first, "fleet", "services")
    assert "web" in table.stdout and "2/2" in table.stdout and "h0,h1" in table.stdout
    text = hive(first, "fleet", "status")
    assert "hive      h0" in text.stdout and "2 placed of 2 wanted" in text.stdout


def test_fleet_apply_bad_files(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet, tmp_path: Path) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints)
    cases = {
        "missing.yaml": None,
        "broken.yaml": "services:\n  web: [unclosed\n",
        "none.yaml": "services:\n  web: {runner: {type: script, script: {run: x}}}\n",
        "wrong.yaml": "services:\n  web: {runner: {type: script, script: {run: x}}, fleet: {replicas: two}}\n",
    }
    expected = {"missing.yaml": "cannot read it", "broken.yaml": "broken.yaml:3: not valid YAML",
                "none.yaml": "no service has a `fleet:` block", "wrong.yaml": "invalid fleet service"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        result = hive(daemon, "fleet", "apply", str(tmp_path / name))
        assert result.returncode != 0, name
        assert expected[name] in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr
    assert as_json(daemon, "fleet", "services") == []  # nothing half-applied


def test_fleet_delete(etcd_cluster: Callable[[int], EtcdCluster], fleet: Fleet) -> None:
    etcd = etcd_cluster(1)
    daemon = fleet.start_hive("h0", etcd.endpoints, capacity=4)
    call(daemon, "apply", services=[fleet.service("web", 2), fleet.service("job", 1)])
    fleet.wait(lambda: len(fleet.running()) == 3, "web and job running")

    # One name unknown: nothing is deleted, and the error names it.
    refused = hive(daemon, "fleet", "delete", "web", "nope")
    assert refused.returncode != 0
    assert "no fleet service 'nope', nothing deleted" in refused.stderr and "Traceback" not in refused.stderr
    assert [s["name"] for s in as_json(daemon, "fleet", "services")] == ["job", "web"]

    deleted = hive(daemon, "fleet", "delete", "web")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 1 fleet services: web" in deleted.stdout
    fleet.wait(lambda: set(fleet.running()) == {"job-0"}, "web's instances stopped, job still running")
    assert as_json(daemon, "fleet", "delete", "job") == {"deleted": ["job"]}
    fleet.wait(lambda: fleet.running() == {}, "job's instance stopped")
    assert as_json(daemon, "fleet", "services") == []
    assert fleet.overlaps() == []
