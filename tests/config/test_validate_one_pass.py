"""``hive config validate`` reports every error of a file in one run: structural,
per-service and across services, each with its file, line and key."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli, write_project

# Ten mistakes of ten kinds; the line and key each must be reported at.
TEN_MISTAKES = """\
version: "1"
hooks: not-a-mapping
services:
  a:
    runner: {type: shell, shell: {run: "echo a"}}
    depends_on: [b]
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
  b:
    runner: {type: script, script: {run: "echo b"}}
    depends_on: [a, ghost]
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
  c:
    runner: {type: script, script: {run: "echo c"}}
    rollout: {type: canary}
    healthcheck: {type: carrier-pigeon}
  d:
    runner: {type: script, script: {run: "echo d"}}
    stop_grace: soon
    expose: {name: pg, vars: {A: b}}
  e:
    runner: {type: script, script: {run: "echo e"}}
    expose: {name: pg, vars: {A: b}}
    environment:
      vault: {path: secret/x}
"""
EXPECTED = [
    (2, "hooks", "expected a mapping"),  # structural
    (5, "services.a.runner.type", "unknown runner type 'shell'"),  # unknown runner
    (6, "services.a.depends_on", "Circular dependency"),  # cycle through a broken service
    (10, "services.b.depends_on", "Unknown dependency: ghost"),
    (11, "services.b.rollout.recreate.ports.http", "Port 8080 is used by multiple services"),
    (14, "services.c.rollout.type", "unknown rollout type 'canary'"),
    (15, "services.c.healthcheck.type", "unknown health check type 'carrier-pigeon'"),
    (18, "services.d.stop_grace", "invalid duration 'soon'"),
    (22, "services.e.expose.name", "Expose name 'pg' conflicts with service d"),
    (24, "services.e.environment.vault", "environment provider 'vault' is not implemented"),
]


def test_ten_mistakes_in_one_run(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", TEN_MISTAKES)
    result = run_cli("--json", "config", "validate", str(root))
    assert result.returncode != 0
    report = json.loads(result.stdout)
    errors = [i for i in report["issues"] if i["severity"] == "error"]
    found = [(i["line"], i["path"]) for i in errors]
    assert found == [(line, key) for line, key, _ in EXPECTED], result.stdout
    for issue, (_, _, text) in zip(errors, EXPECTED, strict=True):
        assert issue["file"] == "hive.yaml"
        assert text in issue["message"], issue


def test_the_human_output_names_file_line_and_key(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", TEN_MISTAKES)
    result = run_cli("config", "validate", str(root))
    assert result.returncode != 0
    for line, key, _ in EXPECTED:
        assert f"hive.yaml:{line}: {key}: " in result.stdout
    assert "10 errors: the configuration is invalid" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unknown_runner_says_how_to_install_one(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", TEN_MISTAKES)
    result = run_cli("config", "validate", str(root))
    assert "'hive.runners' entry-point group: pip install it" in result.stdout


def test_hints_never_offer_the_typo(tmp_path: Path) -> None:
    """A misspelt type beside a correctly named block: the hint is about ``type``."""
    root = write_project(tmp_path / "p", """\
        version: "1"
        proxy:
          ssl: {type: acmee, acme: {}}
          plugins: [{type: corz, cors: {}}]
        hooks:
          pre-up: [{runner: {type: dockr, docker: {image: x}}}]
        services:
          a:
            runner: {type: scrpt, script: {run: a}}
            rollout: {type: recreat, recreate: {ports: {http: 8080}}}
            healthcheck: {type: cmdd, cmd: {command: "true"}}
            proxy: {path: /a, plugins: [{type: hedaers, headers: {}}]}
        """)
    result = run_cli("--json", "config", "validate", str(root))
    issues = json.loads(result.stdout)["issues"]
    typos = ["acmee", "corz", "dockr", "scrpt", "recreat", "cmdd", "hedaers"]
    for issue in issues:
        for typo in typos:
            assert f"did you mean '{typo}'" not in issue["message"], issue
            assert f"did you mean type: {typo}?" not in issue["message"], issue
    messages = "\n".join(i["message"] for i in issues)
    assert "unknown runner type 'scrpt' (did you mean 'script'?)" in messages
    assert "unknown runner type 'dockr' (did you mean 'docker'?)" in messages
    assert "unknown rollout type 'recreat' (did you mean 'recreate'?)" in messages
    assert "unknown health check type 'cmdd' (did you mean 'cmd'?)" in messages
    assert "did you mean type: cors?" in messages and "did you mean type: headers?" in messages


def test_server_health_types_are_checked_like_the_others(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", """\
        version: "1"
        services:
          db:
            runner: {type: script, script: {run: "exec sleep 100"}}
            rollout: {type: recreate, recreate: {ports: {pg: 5432, redis: 6379}}}
            healthcheck:
              - {type: postgres, postgres: {port: "{{runtime.port.pg}}", user: app}}
              - {type: redis, redis: {port: "{{runtime.port.redis}}", db: -1}}
              - {type: grpc, grpc: {port: 50051, service: "api.v1", servce: x}}
              - {type: mysql, mysql: {port: "{{runtime.port.mysql}}"}}
              - {type: mariadb, mariadb: {port: 3306}}
        """)
    result = run_cli("--json", "config", "validate", str(root))
    assert result.returncode != 0
    issues = [(i["severity"], i["line"], i["path"], i["message"])
              for i in json.loads(result.stdout)["issues"]]
    assert issues == [
        ("error", 8, "services.db.healthcheck[1].redis.db", "expected an integer >= 0"),
        ("warning", 9, "services.db.healthcheck[2].grpc.servce",
         "unknown key 'servce' (did you mean 'service'?)"),
        ("error", 10, "services.db.healthcheck[3].mysql.port",
         "Unresolved runtime port: {{runtime.port.mysql}} (ports: pg, redis)"),
        ("error", 11, "services.db.healthcheck[4].type",
         "unknown health check type 'mariadb': use type: mysql (it checks MariaDB too)"),
    ], result.stdout


def test_a_health_check_needs_no_rollout(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", """\
        version: "1"
        services:
          worker:
            runner: {type: script, script: {run: "exec sleep 100"}}
            healthcheck: {type: cmd, cmd: {command: "true"}}
        """)
    result = run_cli("config", "validate", str(root))
    assert result.returncode == 0, result.stdout
