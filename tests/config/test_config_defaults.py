"""`defaults` merging by plugin id (§2): deep-merge mappings, the service value wins, scalars and
lists are replaced whole, and only blocks that exist receive defaults."""

from __future__ import annotations

from .conftest import ErrorsOf, LoadText


def test_runner_defaults_merge_into_existing_blocks(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        defaults:
          hive.runner.script:
            shell: sh
          hive.runner.docker:
            image: postgres:16
            ports: ["5432:5432"]
            security: {cap_drop_all: true, read_only: true}
        services:
          web:
            runner: {type: script, script: {run: npm start}}
          pinned:
            runner: {type: script, script: {run: npm start, shell: /bin/sh}}
          db:
            runner:
              type: docker
              docker:
                ports: ["5433:5432"]
                security: {read_only: false}
        """
    )
    services = project.config.services
    assert services["web"].runner.script is not None
    assert services["web"].runner.script.shell == "sh"
    assert services["pinned"].runner.script is not None
    assert services["pinned"].runner.script.shell == "/bin/sh"  # the service wins
    assert services["db"].runner.config == {
        "image": "postgres:16",
        "ports": ["5433:5432"],  # lists are replaced, never concatenated
        "security": {"cap_drop_all": True, "read_only": False},  # mappings deep-merge
    }


def test_defaults_need_the_block_to_exist(errors_of: ErrorsOf) -> None:
    assert errors_of(
        """
        version: "1"
        defaults:
          hive.runner.script: {run: echo default}
        services:
          a:
            runner: {type: script}
        """
    ) == ["hive.yaml:6: services.a.runner: Missing 'script' configuration for script runner"]


def test_health_rollout_and_env_defaults(load_text: LoadText, tmp_path: object) -> None:
    project = load_text(
        """
        version: "1"
        defaults:
          hive.health.http: {path: /healthz, interval: 2s}
          hive.rollout.blue-green: {healthy_duration: 3s}
          hive.env.dotenv: {files: [.env.shared]}
        services:
          a:
            runner: {type: script, script: {run: a}}
            rollout: {type: blue-green, blue-green: {ports: {http: {blue: 8000, green: 8001}}}}
            healthcheck: {type: http, http: {port: "{{runtime.port.http}}"}}
            proxy: {path: /a}
            environment:
              dotenv: {}
        """
    )
    service = project.config.services["a"]
    check = service.healthchecks[0]
    assert check.http is not None
    assert (check.http.path, check.interval) == ("/healthz", 2.0)
    assert service.rollout is not None
    assert service.rollout.blue_green is not None
    assert service.rollout.blue_green.healthy_duration == 3.0
    assert service.environment.dotenv_files() == [str(project.root / ".env.shared")]


def test_errors_in_merged_defaults_point_at_the_defaults_line(errors_of: ErrorsOf) -> None:
    assert errors_of(
        """
        version: "1"
        defaults:
          hive.runner.script:
            shell: [zsh]
        services:
          a:
            runner: {type: script, script: {run: a}}
        """
    ) == ["hive.yaml:4: services.a.runner.script.shell: expected a string, got a list"]


def test_defaults_are_kept_and_odd_ids_warned(load_text: LoadText) -> None:
    project = load_text(
        """
        version: "1"
        defaults:
          hive.obs.stdout: {format: json}
          runner.script: {shell: zsh}
        services: {}
        """
    )
    assert project.config.defaults == {
        "hive.obs.stdout": {"format": "json"},
        "runner.script": {"shell": "zsh"},
    }
    assert [str(w) for w in project.warnings] == [
        "hive.yaml:4: warning: defaults.runner.script: 'runner.script' is not a plugin id of the "
        "form hive.<category>.<type> (category: parse, runner, env, health, rollout, proxy, obs)"
    ]
