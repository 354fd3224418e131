"""Every invalid hive.yaml gets its own precise error: file, line, key path and message."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive.config import ConfigError, load_project

from .conftest import ErrorsOf, LoadText

INVALID_CONFIGS: list[tuple[str, str, list[str]]] = [
    (
        "run_missing",
        """
version: "1"
services:
  web:
    runner:
      type: script
      script:
        working_dir: ./web
""",
        [
            "hive.yaml:6: services.web.runner.script.run: 'run' is required",
        ],
    ),
    (
        "version_unquoted",
        """
version: 1
services: {}
""",
        [
            'hive.yaml:1: version: expected the string "1", got an integer (1); quote it: version: "1"',
        ],
    ),
    (
        "version_unsupported",
        """
version: "2"
services: {}
""",
        [
            'hive.yaml:1: version: Unsupported version: 2. Expected "1"',
        ],
    ),
    (
        "version_missing",
        """
services: {}
""",
        [
            "hive.yaml:1: version: 'version' is required (version: \"1\")",
        ],
    ),
    (
        "yaml_syntax",
        """
version: "1"
services:
  web:
    runner: {type: script, script: {run: x}
""",
        [
            "hive.yaml:5: invalid YAML: did not find expected ',' or '}' (column 1; while parsing a flow mapping that starts on line 4)",
        ],
    ),
    (
        "top_level_not_mapping",
        """
- version: "1"
""",
        [
            "hive.yaml:1: expected a mapping with 'version' and 'services' at the top level, got a list",
        ],
    ),
    (
        "duplicate_service",
        """
version: "1"
services:
  web:
    runner: {type: script, script: {run: a}}
  web:
    runner: {type: script, script: {run: b}}
""",
        [
            "hive.yaml:5: duplicate key 'web' (first defined on line 3)",
        ],
    ),
    (
        "services_missing",
        """
version: "1"
servics: {}
""",
        [
            "hive.yaml:1: services: 'services' is required",
        ],
    ),
    (
        "service_names",
        """
version: "1"
services:
  Api:
    runner: {type: script, script: {run: a}}
  9lives:
    runner: {type: script, script: {run: a}}
  "":
    runner: {type: script, script: {run: a}}
  my.svc:
    runner: {type: script, script: {run: a}}
""",
        [
            "hive.yaml:3: services.Api: Service name must start with a lowercase letter",
            "hive.yaml:3: services.Api: Service name must contain only lowercase letters, numbers, hyphens, and underscores",
            "hive.yaml:5: services.9lives: Service name must start with a lowercase letter",
            "hive.yaml:7: services: Service name cannot be empty",
            "hive.yaml:9: services.my.svc: Service name must contain only lowercase letters, numbers, hyphens, and underscores",
        ],
    ),
    (
        "cycle",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    depends_on: [b]
  b:
    runner: {type: script, script: {run: b}}
    depends_on: [c]
  c:
    runner: {type: script, script: {run: c}}
    depends_on: [a]
""",
        [
            "hive.yaml:5: services.a.depends_on: Circular dependency detected involving service: a (a -> b -> c -> a)",
        ],
    ),
    (
        "self_dependency",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    depends_on:
      - a
""",
        [
            "hive.yaml:6: services.a.depends_on: Service cannot depend on itself",
            "hive.yaml:6: services.a.depends_on: Circular dependency detected involving service: a (a -> a)",
        ],
    ),
    (
        "unknown_dependency",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    depends_on: [db]
""",
        [
            "hive.yaml:5: services.a.depends_on: Unknown dependency: db",
        ],
    ),
    (
        "port_conflict_between_services",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
  b:
    runner: {type: script, script: {run: b}}
    rollout:
      type: recreate
      recreate:
        ports:
          db: 8080
""",
        [
            "hive.yaml:12: services.b.rollout.recreate.ports.db: Port 8080 is used by multiple services: a:http, b:db",
        ],
    ),
    (
        "port_conflict_in_one_service",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: recreate
      recreate:
        ports:
          http: 8080
          admin: 8080
""",
        [
            "hive.yaml:10: services.a.rollout.recreate.ports.admin: Port 8080 is used by multiple services: a:http, a:admin",
        ],
    ),
    (
        "green_port_conflict",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 9001}}}
  b:
    runner: {type: script, script: {run: b}}
    rollout:
      type: blue-green
      blue-green:
        ports:
          http: {blue: 9000, green: 9001}
    healthcheck: {type: tcp, tcp: {port: "{{runtime.port.http}}"}}
    proxy: {path: /b}
""",
        [
            "hive.yaml:12: services.b.rollout.blue-green.ports.http.green: Port 9001 is used by multiple services: a:http, b:http(green)",
        ],
    ),
    (
        "runner_type_empty",
        """
version: "1"
services:
  a:
    runner:
      type: ""
""",
        [
            "hive.yaml:5: services.a.runner.type: Runner type is required",
        ],
    ),
    (
        "runner_block_missing",
        """
version: "1"
services:
  a:
    runner:
      type: script
""",
        [
            "hive.yaml:4: services.a.runner: Missing 'script' configuration for script runner",
        ],
    ),
    (
        "docker_image_missing",
        """
version: "1"
services:
  db:
    runner:
      type: docker
      docker:
        ports: ["5432:5432"]
""",
        [
            "hive.yaml:6: services.db.runner.docker.image: 'image' is required",
        ],
    ),
    (
        "runner_missing",
        """
version: "1"
services:
  a:
    restart: always
""",
        [
            "hive.yaml:3: services.a.runner: 'runner' is required",
        ],
    ),
    (
        "rollout_required",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    proxy: {path: /a}
""",
        [
            "hive.yaml:3: services.a: rollout is required when proxy is configured (it names the ports to route to)",
        ],
    ),
    (
        "rollout_block_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: recreate
""",
        [
            "hive.yaml:5: services.a.rollout: Missing 'recreate' configuration",
        ],
    ),
    (
        "rollout_ports_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: recreate
      recreate: {}
""",
        [
            "hive.yaml:7: services.a.rollout.recreate.ports: 'ports' is required",
        ],
    ),
    (
        "blue_green_plain_port",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: blue-green
      blue-green:
        ports:
          http: 8080
    healthcheck: {type: tcp, tcp: {port: "{{runtime.port.http}}"}}
    proxy: {path: /}
""",
        [
            "hive.yaml:9: services.a.rollout.blue-green.ports.http: a blue-green port needs both colours, e.g. {blue: 8080, green: <port>}",
        ],
    ),
    (
        "blue_green_needs_check_and_proxy",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: blue-green
      blue-green:
        ports:
          http: {blue: 8080, green: 8081}
""",
        [
            "hive.yaml:5: services.a.rollout: blue-green rollout requires a healthcheck",
            "hive.yaml:5: services.a.rollout: blue-green rollout requires a proxy",
        ],
    ),
    (
        "proxy_path_relative",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy:
      path: api
""",
        [
            "hive.yaml:7: services.a.proxy.path: Path must start with '/'",
        ],
    ),
    (
        "proxy_host_with_protocol",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy:
      - path: /
        host: https://example.test
""",
        [
            "hive.yaml:8: services.a.proxy[0].host: Host must not include protocol (no http:// or https://)",
        ],
    ),
    (
        "proxy_path_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy:
      host: a.test
""",
        [
            "hive.yaml:6: services.a.proxy.path: Path is required",
        ],
    ),
    (
        "proxy_port_ambiguous",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {web: 8080, admin: 8081}}}
    proxy:
      path: /
""",
        [
            "hive.yaml:6: services.a.proxy.port: 'port' is required: the service has no 'http' port (ports: web, admin)",
        ],
    ),
    (
        "health_type_empty",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    healthcheck:
      - type: http
        http: {port: "{{runtime.port.http}}"}
      - type: ""
""",
        [
            "hive.yaml:9: services.a.healthcheck[1].type: Health check type is required",
        ],
    ),
    (
        "health_block_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    healthcheck:
      type: http
""",
        [
            "hive.yaml:6: services.a.healthcheck: Missing 'http' configuration",
        ],
    ),
    (
        "health_port_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    healthcheck:
      type: http
      http:
        path: /healthz
""",
        [
            "hive.yaml:8: services.a.healthcheck.http.port: 'port' is required",
        ],
    ),
    (
        "health_command_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    healthcheck:
      type: cmd
      cmd:
        timeout: 3s
""",
        [
            "hive.yaml:8: services.a.healthcheck.cmd.command: 'command' is required",
        ],
    ),
    (
        "expose_empty",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    expose:
      name: ""
      vars: {}
""",
        [
            "hive.yaml:6: services.a.expose.name: Expose name is required",
            "hive.yaml:7: services.a.expose.vars: At least one variable is required",
        ],
    ),
    (
        "uses_name_missing",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    uses:
      - as: db
""",
        [
            "hive.yaml:6: services.a.uses[0].name: Uses name is required",
        ],
    ),
    (
        "route_conflict",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy: {path: /api}
  b:
    runner: {type: script, script: {run: b}}
    rollout: {type: recreate, recreate: {ports: {http: 8081}}}
    proxy: {path: /api/}
""",
        [
            "hive.yaml:10: services.b.proxy: Route /api/ conflicts with service a",
        ],
    ),
    (
        "expose_name_conflict",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    expose: {name: pg, vars: {PGHOST: localhost}}
  b:
    runner: {type: script, script: {run: b}}
    expose:
      name: pg
      vars: {PGHOST: localhost}
""",
        [
            "hive.yaml:9: services.b.expose.name: Expose name 'pg' conflicts with service a",
        ],
    ),
    (
        "unresolved_variable",
        """
version: "1"
services:
  a:
    runner:
      type: script
      script:
        run: serve --token ${env.TOKEN}
""",
        [
            "hive.yaml:7: services.a.runner.script.run: Unresolved variable: ${env.TOKEN} (no default provided)",
        ],
    ),
    (
        "invalid_duration",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    healthcheck:
      type: tcp
      tcp:
        port: "{{runtime.port.http}}"
        interval: 10 seconds
""",
        [
            "hive.yaml:10: services.a.healthcheck.tcp.interval: invalid duration '10 seconds': expected a number with ms, s, m or h (e.g. '500ms', '10s', '1m'); a bare number is seconds",
        ],
    ),
    (
        "invalid_restart",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    restart: on_failure
""",
        [
            "hive.yaml:5: services.a.restart: invalid restart policy 'on_failure': expected one of never, on-failure, always, unless-stopped (did you mean 'on-failure'?)",
        ],
    ),
    (
        "restart_mapping_without_policy",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    restart:
      delay: 1s
""",
        [
            "hive.yaml:5: services.a.restart.policy: 'policy' is required",
        ],
    ),
    (
        "static_env_null",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    environment:
      static:
        TOKEN:
""",
        [
            "hive.yaml:7: services.a.environment.static.TOKEN: expected a string, got null",
        ],
    ),
    (
        "hook_step_two_kinds",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    hooks:
      pre-up:
        - run: ./migrate
          parallel: []
""",
        [
            "hive.yaml:7: services.a.hooks.pre-up[0]: Hook step must have exactly one of: run, runner, parallel, or type (found 2)",
        ],
    ),
    (
        "hook_parallel_retry",
        """
version: "1"
hooks:
  post-up:
    - parallel:
        - run: ./a
        - run: ./b
      on_failure: retry
services: {}
""",
        [
            "hive.yaml:7: hooks.post-up[0].on_failure: on_failure: retry is not available for parallel groups",
        ],
    ),
    (
        "runtime_port_unknown",
        """
version: "1"
services:
  a:
    runner:
      type: script
      script:
        run: serve --port {{runtime.port.htp}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
""",
        [
            "hive.yaml:7: services.a.runner.script.run: Unresolved runtime port: {{runtime.port.htp}} (ports: http; did you mean 'http'?)",
        ],
    ),
    (
        "depends_on_null",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    depends_on:
""",
        [
            "hive.yaml:5: services.a.depends_on: expected a list, got null",
        ],
    ),
    (
        "stop_signal_unknown",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    stop_signal: SIGFOO
""",
        [
            "hive.yaml:5: services.a.stop_signal: unknown signal 'SIGFOO' (e.g. SIGTERM, TERM, SIGINT, 15)",
        ],
    ),
    (
        "port_out_of_range",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout:
      type: recreate
      recreate:
        ports:
          http: 70000
""",
        [
            "hive.yaml:9: services.a.rollout.recreate.ports.http: invalid port 70000: expected an integer between 1 and 65535, "
            "or 0 for a free port the daemon picks",
        ],
    ),
    (
        "wrong_type",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy:
      path: /
      strip_prefix: maybe
""",
        [
            "hive.yaml:8: services.a.proxy.strip_prefix: expected a boolean (true/false), got a string ('maybe')",
        ],
    ),
    (
        "two_bad_services",
        """
version: "1"
services:
  a:
    runner: {type: script, script: {}}
  b:
    runner: {type: script, script: {run: b}}
    restart: sometimes
""",
        [
            "hive.yaml:4: services.a.runner.script.run: 'run' is required",
            "hive.yaml:7: services.b.restart: invalid restart policy 'sometimes': expected one of never, on-failure, always, unless-stopped",
        ],
    ),
    (
        # A bad block of a built-in proxy plugin is an error: the proxy would leave the
        # plugin out, and a route meant to be rate limited would not be.
        "proxy_plugin_blocks",
        """
version: "1"
proxy:
  plugins:
    - {type: rate-limit, rate-limit: {requests: -5, per: 1}}
services:
  a:
    runner: {type: script, script: {run: a}}
    rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    proxy:
      path: /a
      plugins: [{type: cors, cors: {origins: [1], credentials: "yes"}}]
""",
        [
            "hive.yaml:4: proxy.plugins[0].rate-limit.requests: expected a number > 0.0",
            "hive.yaml:11: services.a.proxy.plugins[0].cors.credentials: expected a boolean (true/false), got a string ('yes')",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in INVALID_CONFIGS],
)
def test_invalid_config_reports_exact_errors(
    errors_of: ErrorsOf, text: str, expected: list[str]
) -> None:
    assert errors_of(text) == expected


def test_table_is_large_enough() -> None:
    assert len(INVALID_CONFIGS) >= 25
    assert len({name for name, _, _ in INVALID_CONFIGS}) == len(INVALID_CONFIGS)


def _load_bytes(tmp_path: Path, data: bytes) -> ConfigError:
    (tmp_path / "hive.yaml").write_bytes(data)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path, environ={})
    return caught.value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            b'version: "1"\nservices:\n  a: \xff\n',
            "hive.yaml:3: Failed to read config file: not valid UTF-8 (byte 0xff)",
            id="not-utf8",
        ),
        pytest.param(
            b'version: "1"\nservices: {}\n\x00\n',
            "hive.yaml:3: Failed to read config file: contains a NUL character",
            id="nul",
        ),
        pytest.param(
            b"",
            "hive.yaml:1: file is empty: expected a mapping with 'version' and 'services'",
            id="empty",
        ),
        pytest.param(
            b"# just a comment\n",
            "hive.yaml:1: file is empty: expected a mapping with 'version' and 'services'",
            id="comment-only",
        ),
        pytest.param(
            b'"just a string"\n',
            "hive.yaml:1: expected a mapping with 'version' and 'services' at the top level, "
            "got a string ('just a string')",
            id="scalar-top-level",
        ),
        pytest.param(
            b'version: "1"\nservices: ' + b"[" * 500 + b"]" * 500 + b"\n",
            "hive.yaml:2: invalid YAML: nesting deeper than 64 levels",
            id="deep-nesting",
        ),
        pytest.param(
            b'version: !!binary "MQ=="\nservices: {}\n',
            "hive.yaml:1: unsupported YAML tag 'tag:yaml.org,2002:binary'",
            id="binary-tag",
        ),
        pytest.param(
            b'version: "1"\nservices:\n  ? [a, b]\n  : x\n',
            "hive.yaml:3: mapping keys must be plain strings",
            id="complex-key",
        ),
        pytest.param(
            b'version: "1"\n---\nversion: "1"\n',
            "hive.yaml:2: invalid YAML: a second document starts here; use one document",
            id="two-documents",
        ),
        pytest.param(
            b'version: "1"\nservices:\n  a: {runner: {type: script, script: {run: 1'
            + b"0" * 5000
            + b"}}}\n",
            "hive.yaml:3: invalid integer '1000000000000000000000000000000000000000'",
            id="huge-integer",
        ),
    ],
)
def test_unreadable_files(tmp_path: Path, data: bytes, expected: str) -> None:
    assert [str(issue) for issue in _load_bytes(tmp_path, data).issues] == [expected]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ['version: "1"', "services: {}", "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, 8):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"x{level}: &a{level} [{refs}]")
    error = _load_bytes(tmp_path, ("\n".join(lines) + "\n").encode())
    assert "more than 200000 values" in str(error)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file found"):
        load_project(tmp_path)
    with pytest.raises(ConfigError, match="Failed to read config file"):
        load_project(tmp_path / "nope.yaml")


def test_all_errors_of_a_file_are_collected(errors_of: ErrorsOf) -> None:
    errors = errors_of(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            restart: sometimes
            stop_signal: FOO
            stop_grace: 10x
            depends_on: [ghost]
          b:
            runner: {type: docker, docker: {}}
          c:
            runner: {type: script, script: {run: c}}
            depends_on: [a]
        """
    )
    # The unknown dependency of a service with errors is reported in the same run.
    assert [error.split(":")[1] for error in errors] == ["5", "6", "7", "8", "10"]
    assert errors[0].startswith("hive.yaml:5: services.a.restart: invalid restart policy")
    assert errors[1] == (
        "hive.yaml:6: services.a.stop_signal: unknown signal 'FOO' (e.g. SIGTERM, TERM, SIGINT, 15)"
    )
    assert errors[2].startswith("hive.yaml:7: services.a.stop_grace: invalid duration '10x'")
    assert errors[3] == "hive.yaml:8: services.a.depends_on: Unknown dependency: ghost"
    assert errors[4] == "hive.yaml:10: services.b.runner.docker.image: 'image' is required"


def test_dependency_on_a_broken_service_is_not_unknown(errors_of: ErrorsOf) -> None:
    errors = errors_of(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            depends_on: [b]
          b:
            runner: {type: script}
        """
    )
    assert errors == [
        "hive.yaml:7: services.b.runner: Missing 'script' configuration for script runner"
    ]


def test_config_error_prints_one_issue_per_line(errors_of: ErrorsOf, load_text: LoadText) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(
            """
            version: "1"
            services:
              a: {runner: {type: ""}}
              b: {runner: {type: ""}}
            """
        )
    assert str(caught.value).splitlines() == [
        "hive.yaml:3: services.a.runner.type: Runner type is required",
        "hive.yaml:4: services.b.runner.type: Runner type is required",
    ]
    assert all(issue.severity == "error" for issue in caught.value.issues)
