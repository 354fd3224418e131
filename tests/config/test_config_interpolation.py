"""Parse-time `${plugin.key}` interpolation (§12) and the reference's conformance cases."""

from __future__ import annotations

import pytest

from hive.config import ConfigError, build_environment, render_runtime
from hive.config._templates import interpolate

from .conftest import ErrorsOf, LoadText

ENV = {"V": "value", "EMPTY": "", "NESTED": "${env.V}"}


def _resolve(plugin: str, key: str) -> str | None:
    return ENV.get(key) if plugin == "env" else None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${env.V}", "value"),
        ("a-${env.V}-b-${env.V}", "a-value-b-value"),
        ("${env.UNSET:-fallback}", "fallback"),
        ("${env.EMPTY:-fallback}", ""),  # a value is used even when empty
        ("${env.UNSET:-}", ""),
        ("${env.UNSET:-a:b}", "a:b"),  # the default may contain ':'
        ("${env.NESTED}", "${env.V}"),  # one pass, no re-scan of results
        ("$${env.V}", "${env.V}"),  # escape
        ("$${HOME}", "${HOME}"),
        ("${HOME}", "${HOME}"),  # no plugin: kept verbatim
        ("${aws-ssm.k}", "${aws-ssm.k}"),  # '-' is not in the plugin grammar
        ("${env.A:b}", "${env.A:b}"),  # ':' without '-' does not match
        ("$$", "$$"),
        ("{{{runtime.port.http}}}", "{{{runtime.port.http}}}"),  # S: `{{{` is a runtime escape only
        ("no dollars", "no dollars"),
    ],
)
def test_interpolate_grammar(text: str, expected: str) -> None:
    assert interpolate(text, _resolve) == (expected, [])


def test_interpolate_reports_each_unresolved_reference() -> None:
    text, unresolved = interpolate("${env.X} ${vault.k} ${env.V}", _resolve)
    assert text == "${env.X} ${vault.k} value"
    assert unresolved == [("${env.X}", "env"), ("${vault.k}", "vault")]


def test_service_name_resolves_inside_its_service(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          api:
            runner: {type: script, script: {run: "echo ${service.name}"}}
            environment:
              static: {NAME: "${service.name}", LOG: "/var/log/${service.name}.log"}
        """
    )
    service = project.config.services["api"]
    assert service.runner.script is not None
    assert service.runner.script.run == "echo api"
    assert service.environment.static == {"NAME": "api", "LOG": "/var/log/api.log"}


def test_service_name_outside_a_service_needs_a_default(
    errors_of: ErrorsOf, load_text: LoadText
) -> None:
    assert errors_of(
        """
        version: "1"
        environment:
          static: {A: "${service.name}"}
        services: {}
        """
    ) == [
        "hive.yaml:3: environment.static.A: Unresolved variable: ${service.name} "
        "(no default provided); ${service.name} resolves only inside services.<name>"
    ]
    project = load_text(
        """
        version: "1"
        environment:
          static: {A: "${service.name:-global}"}
        services: {}
        """
    )
    assert project.config.environment.static == {"A": "global"}


def test_keys_are_never_interpolated(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            environment:
              static: {"${env.V}": "${env.V}"}
        """,
        environ={"V": "x"},
    )
    assert project.config.services["a"].environment.static == {"${env.V}": "x"}


def test_unknown_plugin_is_unresolved(errors_of: ErrorsOf) -> None:
    assert errors_of(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: "${vault.token}"}}
        """
    ) == [
        "hive.yaml:4: services.a.runner.script.run: Unresolved variable: ${vault.token} "
        "(no default provided); no parse-time plugin 'vault' is available"
    ]


# ---- the reference's ten tricky cases (the ones about parsing) ---------------------------------

SIMPLE = """
version: "1"
services:
  a:
    runner: {type: script, script: {run: "echo %s"}}
"""


def _run_of(load_text: LoadText, value: str, environ: dict[str, str]) -> str:
    project = load_text(SIMPLE % value, environ=environ)
    script = project.config.services["a"].runner.script
    assert script is not None
    return script.run.removeprefix("echo ")


def test_case_2_env_defaults(load_text: LoadText, errors_of: ErrorsOf) -> None:
    assert _run_of(load_text, "${env.V:-d}", {}) == "d"
    assert _run_of(load_text, "${env.V:-d}", {"V": ""}) == ""
    assert _run_of(load_text, "${env.V:-}", {}) == ""
    with pytest.raises(ConfigError, match=r"Unresolved variable: \$\{env.V\}"):
        load_text(SIMPLE % "${env.V}")
    # Spec S: `${service.name}` resolves inside the service (C needs a default).
    assert _run_of(load_text, "${service.name}", {}) == "a"


def test_case_3_escapes(load_text: LoadText) -> None:
    assert _run_of(load_text, "$${HOME}", {"HOME": "/root"}) == "${HOME}"
    assert _run_of(load_text, "${HOME} ${aws-ssm.k}", {}) == "${HOME} ${aws-ssm.k}"
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            rollout: {type: recreate, recreate: {ports: {http: 8080}}}
            environment:
              static: {LITERAL: "{{{runtime.port.http}}}", PORT: "{{runtime.port.http}}"}
        """
    )
    service = project.config.services["a"]
    env = build_environment(project, service, {}, ports=service.ports())
    assert env == {"LITERAL": "{{runtime.port.http}}", "PORT": "8080"}  # spec S, not C's `8080}`


def test_case_4_blue_green(errors_of: ErrorsOf) -> None:
    base = """
    version: "1"
    services:
      a:
        runner: {type: script, script: {run: a}}
        healthcheck: {type: tcp, tcp: {port: "{{runtime.port.http}}"}}
        proxy: {path: /}
        rollout:
          type: blue-green
          blue-green: %s
    """
    assert errors_of(base % "{timeout: 30s}") == [
        "hive.yaml:9: services.a.rollout.blue-green.ports: 'ports' is required"
    ]
    assert errors_of(base % "{ports: {http: 8080}}") == [
        "hive.yaml:9: services.a.rollout.blue-green.ports.http: a blue-green port needs both "
        "colours, e.g. {blue: 8080, green: <port>}"
    ]


def test_case_5_version(errors_of: ErrorsOf) -> None:
    assert errors_of("version: 1\nservices: {}\n") == [
        'hive.yaml:1: version: expected the string "1", got an integer (1); quote it: version: "1"'
    ]
    assert errors_of('version: "2"\nservices: {}\n') == [
        'hive.yaml:1: version: Unsupported version: 2. Expected "1"'
    ]


def test_case_6_string_fields_accept_c_written_numbers(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: a}}
            rollout: {type: recreate, recreate: {ports: {http: 3000}}}
            environment: {static: {PORT: 8080, RATIO: 1.10, DEBUG: true}}
            proxy: {path: /, port: 3000}
            healthcheck: {type: http, http: {port: 3000, interval: 3}}
        """
    )
    service = project.config.services["a"]
    # The source text is kept: 1.10 stays "1.10", true stays "true".
    assert service.environment.static == {"PORT": "8080", "RATIO": "1.10", "DEBUG": "true"}
    assert service.proxy[0].port == "3000"
    check = service.healthchecks[0]
    assert check.http is not None
    assert check.http.port == "3000"
    assert check.interval == 3.0  # a bare number is seconds


def test_case_7_interpolated_ports_are_ports(load_text: LoadText, errors_of: ErrorsOf) -> None:
    text = """
    version: "1"
    services:
      a:
        runner: {type: script, script: {run: a}}
        rollout:
          type: recreate
          recreate:
            ports:
              http: ${env.P}
      b:
        runner: {type: script, script: {run: b}}
        rollout: {type: recreate, recreate: {ports: {http: 8080}}}
    """
    assert load_text(text, environ={"P": "8081"}).config.services["a"].ports() == {"http": 8081}
    # The conflict check sees interpolated ports too.
    assert errors_of(text, environ={"P": "8080"}) == [
        "hive.yaml:12: services.b.rollout.recreate.ports.http: "
        "Port 8080 is used by multiple services: a:http, b:http"
    ]


def test_case_10_process_env_beats_dotenv_at_parse_time(load_text: LoadText) -> None:
    text = """
    version: "1"
    environment:
      dotenv: {files: [.env]}
    services:
      a:
        runner: {type: script, script: {run: "${env.A} ${env.B}"}}
    """
    project = load_text(text, environ={"A": "process"}, files={".env": "A=dotenv\nB='quoted'\n"})
    script = project.config.services["a"].runner.script
    assert script is not None
    assert script.run == "process quoted"


def test_render_runtime_is_used_by_the_case_3_example() -> None:
    assert (
        render_runtime("{{{runtime.port.http}}}", ports={"http": 8080}) == "{{runtime.port.http}}"
    )


def test_values_from_the_environment_are_shown_as_their_reference(load_text: LoadText, errors_of: ErrorsOf) -> None:
    """An error that quotes a value ${env.X} or a dotenv file gave shows ``${env.X}``; the
    loaded project lists what to hide (numbers and values under 4 characters are not)."""
    text = """
    version: "1"
    environment:
      dotenv: {file: .env}
    services:
      web:
        runner: {type: script, script: {run: "serve ${env.TOKEN} ${env.FROM_FILE} ${env.ON} ${env.PORT}"}}
        restart: {policy: always, delay: "${env.DELAY}"}
    """
    files = {".env": "FROM_FILE=file-secret\n"}
    environ = {"TOKEN": "s3cr3t-value", "ON": "on", "PORT": "8080", "DELAY": "soon-secret"}
    (error,) = errors_of(text, environ=environ, files=files)
    assert error.startswith("hive.yaml:7: services.web.restart.delay: invalid duration '${env.DELAY}': ")
    project = load_text(text, environ={**environ, "DELAY": "1s"}, files=files)
    assert project.secrets == {"s3cr3t-value": "${env.TOKEN}", "file-secret": "${env.FROM_FILE}"}
