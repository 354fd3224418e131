"""The docker/podman common keys (env_file, labels, working_dir, hostname, extra_hosts,
mem_limit, cpus, init, user, pull) in hive.yaml: accepted as the runner takes them, and
each wrong value an error with its file, line and key."""

from __future__ import annotations

import textwrap

from runners.base import RunSpec
from runners.podman import PodmanRunner

from .conftest import ErrorsOf, LoadText


def block(lines: str) -> str:
    indented = "\n".join(f"                {line}" for line in textwrap.dedent(lines).strip().splitlines())
    return f"""
        version: "1"
        services:
          web:
            runner:
              type: docker
              docker:
                image: nginx:1.27
{indented}
        """


def test_the_common_keys_load_and_decode(load_text: LoadText) -> None:
    project = load_text(block("""
        env_file: [.env.web]
        labels: {team: core}
        working_dir: /srv
        hostname: web
        extra_hosts: {db.internal: 10.0.0.5}
        mem_limit: 512m
        cpus: 1.5
        init: true
        user: "1000:1000"
        pull: always
    """))
    assert [str(warning) for warning in project.warnings] == []
    config = PodmanRunner().config_of(RunSpec(fqn="p:web", config=project.config.services["web"].runner.config))
    assert (config.env_file, config.labels, config.working_dir, config.hostname) == (
        [".env.web"], {"team": "core"}, "/srv", "web")
    assert (config.extra_hosts, config.mem_limit, config.cpus, config.init, config.user, config.pull) == (
        {"db.internal": "10.0.0.5"}, "512m", 1.5, True, "1000:1000", "always")


def test_each_wrong_value_is_an_error_with_its_line(errors_of: ErrorsOf) -> None:
    assert errors_of(block("""
        mem_limit: lots
        cpus: 0
        labels: {hive.fqn: x}
        working_dir: srv
        extra_hosts: [db.internal]
    """)) == [
        "hive.yaml:8: services.web.runner.docker.mem_limit: invalid memory size 'lots': expected bytes "
        "or a size like 512m, 1g",
        "hive.yaml:9: services.web.runner.docker.cpus: cpus must be more than 0 (e.g. 0.5), not 0",
        "hive.yaml:10: services.web.runner.docker.labels.hive.fqn: 'hive.fqn': labels hive.* are Hive's "
        "own (hive.fqn, hive.config-hash ...); use another prefix",
        "hive.yaml:11: services.web.runner.docker.working_dir: 'srv' is not an absolute path inside the "
        "container (e.g. /app)",
        "hive.yaml:12: services.web.runner.docker.extra_hosts[0]: 'db.internal': expected HOST:ADDRESS "
        "(e.g. db:10.0.0.5)",
    ]


def test_the_pull_policy_is_one_of_three_and_agrees_with_deny_pull(errors_of: ErrorsOf) -> None:
    assert errors_of(block("pull: sometimes")) == [
        "hive.yaml:8: services.web.runner.docker.pull: invalid value 'sometimes': expected one of "
        "always, missing, never",
    ]
    assert errors_of(block("pull: always\ndeny_pull: true")) == [
        "hive.yaml:8: services.web.runner.docker.pull: pull: always contradicts deny_pull: keep one",
    ]
    assert errors_of(block("mem_limit: 1k")) == [
        "hive.yaml:8: services.web.runner.docker.mem_limit: memory size '1k' is below the engines' "
        "minimum of 6m",
    ]
