"""A valid hive.yaml becomes the typed model: shapes, defaults, normalisation, helpers."""

from __future__ import annotations

import signal
from pathlib import Path

import msgspec
import pytest

from hive.config import (
    CONFIG_FILENAMES,
    ConfigError,
    HookStep,
    PortBinding,
    RestartSpec,
    find_config_file,
    find_project_root,
    load_project,
    parse_service_entry,
    service_fingerprint,
    validate_services,
)

from .conftest import LoadText, WriteProject

FULL = """
version: "1"
registry_url: https://registry.test
x-common: &common
  restart: {policy: on-failure, delay: 0s, max_delay: 1m, reset_after: 90s, jitter: false}
proxy:
  bind: 127.0.0.1:9090
  dns: {enabled: false}
  plugins:
    - {type: cors, cors: {origins: ["*"]}}
observability:
  resource_interval: 5s
  plugins: [stdout]
  collectors: {traces: false}
environment:
  static: {LOG: debug}
hooks:
  pre-up:
    - run: ./scripts/check.sh
services:
  db:
    runner:
      type: docker
      docker: {image: "postgres:16", ports: ["5432:5432"], environment: {POSTGRES_PASSWORD: dev}}
    rollout: {type: recreate, recreate: {ports: {pg: 5432}}}
    healthcheck: {type: tcp, tcp: {port: "{{runtime.port.pg}}", interval: 500ms}}
    expose: {name: shared-pg, secret: s3cret, vars: {PGPORT: "{{runtime.port.pg}}"}}
  web:
    <<: *common
    runner:
      type: script
      script: {run: "npm start -- --port {{runtime.port.http}}", working_dir: ./web}
    rollout:
      type: blue-green
      blue-green:
        ports: {http: {blue: 8000, green: 8001}}
        timeout: 2m
        on_failure: abort
    healthcheck:
      - {type: http, http: {port: "{{runtime.port.http}}", path: /ready, status: 204}}
      - {type: cmd, cmd: {command: ./check, working_dir: tools, timeout: 30s}}
    proxy:
      - {host: app.test, path: /, strip_prefix: true, timeout: 5s, buffer_size: 64KB}
      - {path: /admin, port: "8000", headers: {add: {X-From: hive}}, plugins: [{type: rate-limit, skip: true}]}
    depends_on: [db]
    build: {command: npm ci, when: always, output: dist}
    hooks:
      pre-up:
        - run: ./migrate
          on_failure: retry
          retries: 2
          retry_delay: 1s
          environment: {STAGE: "1"}
        - parallel:
            - run: ./a
            - {type: docker, docker: {image: alpine}}
      post-down:
        - runner: {type: script, script: {run: ./cleanup}}
    uses:
      - {name: shared-pg, secret: s3cret, as: pg, vars: {PGPORT: DATABASE_PORT}}
    stop_signal: INT
    stop_grace: 30s
"""


@pytest.fixture
def full(load_text: LoadText) -> object:
    return load_text(FULL)


def test_full_file(load_text: LoadText) -> None:
    project = load_text(FULL)
    root = str(project.root)
    config = project.config
    assert project.file == project.root / "hive.yaml"
    assert project.source_name == project.root.name
    assert config.registry_url == "https://registry.test"
    assert config.proxy.bind == ["127.0.0.1:9090"]
    assert config.proxy.dns is not None
    assert config.proxy.dns.enabled is False
    assert [(p.type, p.config) for p in config.proxy.plugins] == [("cors", {"origins": ["*"]})]
    assert config.observability is not None
    assert config.observability.resource_interval == 5.0
    assert config.observability.collectors.traces is False
    assert config.hooks.pre_up == [
        HookStep(kind="run", run="./scripts/check.sh", working_dir=root, on_failure="abort")
    ]
    assert list(config.services) == ["db", "web"]

    db = config.services["db"]
    assert db.ports() == {"pg": 5432}
    assert db.runner.script is None
    assert db.runner.config["environment"] == {"POSTGRES_PASSWORD": "dev"}
    assert db.healthchecks[0].interval == 0.5
    assert db.working_dir() == root
    assert db.expose is not None
    assert db.expose.vars == {"PGPORT": "{{runtime.port.pg}}"}

    web = config.services["web"]
    assert web.restart == RestartSpec(
        policy="on-failure", delay=0.0, max_delay=60.0, reset_after=90.0, jitter=False
    )
    assert web.runner.script is not None
    assert web.runner.script.working_dir == f"{root}/web"
    assert web.working_dir() == f"{root}/web"
    assert web.rollout is not None
    assert web.rollout.ports == {"http": PortBinding(blue=8000, green=8001)}
    assert web.rollout.blue_green is not None
    assert (web.rollout.blue_green.timeout, web.rollout.blue_green.on_failure) == (120.0, "abort")
    assert web.ports() == {"http": 8000}
    assert web.ports("green") == {"http": 8001}
    http, cmd = web.healthchecks
    assert http.http is not None
    assert (http.http.path, http.http.status, http.timeout) == ("/ready", 204, 5.0)
    assert cmd.cmd is not None
    assert (cmd.cmd.working_dir, cmd.timeout) == (f"{root}/tools", 30.0)
    first, second = web.proxy
    assert (first.host, first.port, first.strip_prefix, first.timeout, first.buffer_size) == (
        "app.test",
        "{{runtime.port.http}}",  # defaulted to the http port
        True,
        5.0,
        64 * 1024,
    )
    assert second.headers.add == {"X-From": "hive"}
    assert second.plugins[0].skip is True
    assert web.depends_on == ["db"]
    assert web.build is not None
    assert (web.build.working_dir, web.build.output) == (f"{root}/web", f"{root}/web/dist")
    migrate, group = web.hooks.pre_up
    assert (migrate.on_failure, migrate.retries, migrate.retry_delay) == ("retry", 2, 1.0)
    assert migrate.working_dir == f"{root}/web"  # S: the service's working dir
    assert migrate.environment == {"STAGE": "1"}
    assert group.kind == "parallel"
    assert [child.kind for child in group.parallel] == ["run", "runner"]
    assert group.parallel[1].runner is not None
    assert group.parallel[1].runner.config == {"image": "alpine"}
    cleanup = web.hooks.post_down[0]
    assert (cleanup.kind, cleanup.on_failure) == ("runner", "warn")  # down hooks default to warn
    assert web.uses[0].alias() == "pg"
    assert web.uses[0].vars == {"PGPORT": "DATABASE_PORT"}
    assert (web.stop_signal, web.stop_grace) == ("SIGINT", 30.0)
    assert web.stop_signum() == signal.SIGINT

    assert project.warnings == []
    assert project.inactive == [
        "observability: not active yet (settings are kept)",
    ]  # (web's blue-green rollout is active, a script service's; so is proxy.dns)


def test_minimal_service_defaults(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: ./a}}
        """
    )
    service = project.config.services["a"]
    assert service.restart == RestartSpec(policy="never")
    assert (service.stop_signal, service.stop_grace) == ("SIGTERM", 10.0)
    assert service.stop_signum() == signal.SIGTERM
    assert service.ports() == {}
    assert service.rollout is None
    assert service.healthchecks == []
    assert service.hooks.is_empty()
    assert project.inactive == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("TERM", "SIGTERM"),
        ("sigterm", "SIGTERM"),
        ("SIGHUP", "SIGHUP"),
        (15, "SIGTERM"),
        (2, "SIGINT"),
    ],
)
def test_stop_signal_forms(load_text: LoadText, value: object, expected: str) -> None:
    project = load_text(
        f"""
        version: "1"
        services:
          a:
            runner: {{type: script, script: {{run: a}}}}
            stop_signal: {value}
        """
    )
    assert project.config.services["a"].stop_signal == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1.5m", 90.0), ("1h", 3600.0), ("0.5s", 0.5), ("7", 7.0)],
)
def test_durations(load_text: LoadText, value: str, seconds: float) -> None:
    project = load_text(
        f"""
        version: "1"
        services:
          a:
            runner: {{type: script, script: {{run: a}}}}
            stop_grace: {value}
        """
    )
    assert project.config.services["a"].stop_grace == seconds


@pytest.mark.parametrize("policy", ["never", "on-failure", "always", "unless-stopped"])
def test_restart_string_form(load_text: LoadText, policy: str) -> None:
    project = load_text(
        f"""
        version: "1"
        services:
          a:
            runner: {{type: script, script: {{run: a}}}}
            restart: {policy}
        """
    )
    assert project.config.services["a"].restart == RestartSpec(policy=policy)  # type: ignore[arg-type]


def test_yaml_1_2_scalars(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            environment:
              static: {YES: yes, ON: on, TIME: 1:30, DATE: 2024-01-01, OCT: 0o17, HEX: 0x1F}
        """
    )
    assert project.config.services["a"].environment.static == {
        "YES": "yes",
        "ON": "on",
        "TIME": "1:30",
        "DATE": "2024-01-01",
        "OCT": "0o17",
        "HEX": "0x1F",
    }


def test_unknown_keys_warn_with_suggestions(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        servces_extra: 1
        x-anchors: {}
        services:
          a:
            runner:
              type: script
              script: {run: a, workdir: x}
              scirpt: {}
            restat: always
            healthcheck: ~
        """
    )
    assert [str(w) for w in project.warnings] == [
        "hive.yaml:2: warning: servces_extra: unknown key 'servces_extra' "
        "(did you mean 'services'?)",
        "hive.yaml:8: warning: services.a.runner.script.workdir: unknown key 'workdir' "
        "(did you mean 'working_dir'?)",
        "hive.yaml:9: warning: services.a.runner.scirpt: ignored: the runner type is 'script' "
        "(did you mean 'script'?)",
        "hive.yaml:10: warning: services.a.restat: unknown key 'restat' (did you mean 'restart'?)",
    ]
    assert project.inactive == []


def test_config_file_locations(write_project: WriteProject, tmp_path: Path) -> None:
    assert CONFIG_FILENAMES == ("hive.yaml", ".hive/hive.yaml", ".adi/hive.yaml")
    assert find_config_file(tmp_path) is None
    text = 'version: "1"\nservices: {}\n'
    write_project(text, name=".adi/hive.yaml")
    assert find_config_file(tmp_path) == tmp_path / ".adi/hive.yaml"
    write_project(text, name=".hive/hive.yaml")
    assert find_config_file(tmp_path) == tmp_path / ".hive/hive.yaml"
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    assert find_project_root(nested) == tmp_path
    # Given the file itself, the root is the parent of `.hive/`.
    project = load_project(tmp_path / ".adi/hive.yaml", source_name="mine")
    assert (project.root, project.source_name) == (tmp_path, "mine")
    write_project('version: "1"\n', name=".adi/hive.yaml")
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path / ".adi/hive.yaml")
    assert str(caught.value) == ".adi/hive.yaml:1: services: 'services' is required"


def test_parse_service_entry(tmp_path: Path) -> None:
    entry = {
        "runner": {"type": "script", "script": {"run": "serve {{runtime.port.http}}"}},
        "rollout": {"type": "recreate", "recreate": {"ports": {"http": "8080"}}},
        "restart": "always",
        "depends_on": ("db",),
    }
    service = parse_service_entry("api", entry, root=tmp_path, source_name="cocoons")
    assert (service.name, service.source, service.root) == ("api", "cocoons", str(tmp_path))
    assert service.ports() == {"http": 8080}
    assert service.depends_on == ["db"]
    assert entry["depends_on"] == ("db",)  # the input is not modified

    with pytest.raises(ConfigError) as caught:
        parse_service_entry(
            "Bad", {"runner": {"type": "script", "script": {}}}, root=tmp_path, source_name="s"
        )
    assert str(caught.value).splitlines() == [
        "<api>: services.Bad: Service name must start with a lowercase letter",
        "<api>: services.Bad: Service name must contain only lowercase letters, numbers, "
        "hyphens, and underscores",
        "<api>: services.Bad.runner.script.run: 'run' is required",
    ]
    with pytest.raises(ConfigError, match="unsupported value of type bytes"):
        parse_service_entry("a", {"runner": b"x"}, root=tmp_path, source_name="s", file="db")
    with pytest.raises(ConfigError, match="service name must be a string"):
        parse_service_entry(3, {}, root=tmp_path, source_name="s")  # type: ignore[arg-type]


def test_validate_services_across_sources(tmp_path: Path) -> None:
    def make(name: str, port: int, depends_on: list[str]) -> object:
        return parse_service_entry(
            name,
            {
                "runner": {"type": "script", "script": {"run": "x"}},
                "rollout": {"type": "recreate", "recreate": {"ports": {"http": port}}},
                "depends_on": depends_on,
            },
            root=tmp_path,
            source_name="db-source",
        )

    services = {"a": make("a", 7000, ["b"]), "b": make("b", 7000, ["a", "c"])}
    issues = validate_services(services, file="cocoons")  # type: ignore[arg-type]
    assert [str(issue) for issue in issues] == [
        "cocoons: services.b.depends_on: Unknown dependency: c",
        "cocoons: services.a.depends_on: Circular dependency detected involving service: a "
        "(a -> b -> a)",
        "cocoons: services.b.rollout.recreate.ports.http: Port 7000 is used by multiple "
        "services: a:http, b:http",
    ]


def test_fingerprint(load_text: LoadText, write_project: WriteProject) -> None:
    text = """
    version: "1"
    services:
      a:
        runner: {type: script, script: {run: "echo ${env.GREETING}"}}
        restart: always
      b:
        runner: {type: script, script: {run: b}}
    """
    first = load_text(text, environ={"GREETING": "hi"}).config
    # Comments and layout do not matter; effective values do.
    second = load_text("# comment\n\n" + text, environ={"GREETING": "hi"}).config
    third = load_text(text, environ={"GREETING": "hello"}).config
    fingerprint = service_fingerprint(first.services["a"])
    assert isinstance(fingerprint, bytes)
    assert service_fingerprint(second.services["a"]) == fingerprint
    assert service_fingerprint(third.services["a"]) != fingerprint
    assert service_fingerprint(third.services["b"]) == service_fingerprint(first.services["b"])
    changed_global = msgspec.structs.replace(
        first, environment=msgspec.structs.replace(first.environment, static={"X": "1"})
    )
    assert service_fingerprint(first.services["b"], project=first) != service_fingerprint(
        first.services["b"], project=changed_global
    )
