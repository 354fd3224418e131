"""A service's process environment, layered per spec S, with dotenv files read at call time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ._issues import ConfigError, ConfigIssue
from ._model import EnvironmentSpec, HiveConfig, ServiceConfig
from ._read import read_capped
from ._templates import DotenvSyntaxError, parse_dotenv, render_runtime

if TYPE_CHECKING:
    from ._loader import LoadedProject


def read_dotenv_file(path: str | Path) -> dict[str, str]:
    """The variables of one dotenv file; a missing file is empty. Unreadable -> ConfigError."""
    file = Path(path)
    try:
        raw = read_capped(file)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, or over the cap
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(
            [ConfigIssue("error", str(file), None, "", f"cannot read dotenv file: {reason}")]
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [ConfigIssue("error", str(file), line, "", "dotenv file is not valid UTF-8")]
        ) from None
    try:
        return parse_dotenv(text)
    except DotenvSyntaxError as exc:
        raise ConfigError([ConfigIssue("error", str(file), exc.line, "", f"dotenv file: {exc}")]) from None


def _scope_values(spec: EnvironmentSpec) -> dict[str, str]:
    """One scope: providers in declaration order (later wins), then static over all of them."""
    values: dict[str, str] = {}
    for provider in spec.providers:
        if provider.type == "dotenv":
            for file in provider.config.get("files", []):
                values.update(read_dotenv_file(str(file)))
        # No other provider gets here: validation refuses them (vault, 1password, ...).
    values.update(spec.static)
    return values


def global_environment(config: HiveConfig, base_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of what belongs to no one service (global hooks): ``base_env``
    under the project's global ``environment``."""
    env = dict(base_env)
    env.update(_scope_values(config.environment))
    return env


def build_environment(
    project: LoadedProject | HiveConfig | EnvironmentSpec | None,
    service: ServiceConfig,
    base_env: Mapping[str, str],
    *,
    ports: Mapping[str, int] | None = None,
    uses: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, str]:
    """The environment of one service start. Precedence, highest first (spec S):
    service static > service providers (dotenv) > global static > global providers > base_env.

    ``project`` supplies the global ``environment`` (None for a source without one). Dotenv files
    are read now, so edits apply on the next start. With ``ports`` (and ``uses``) the values from
    the config are runtime-rendered (``{{runtime.port.X}}``; RuntimeTemplateError when
    unresolvable); ``base_env`` is never rendered.
    """
    environment = dict(base_env)
    environment.update(configured_environment(project, service, ports=ports, uses=uses))
    return environment


def configured_environment(
    project: LoadedProject | HiveConfig | EnvironmentSpec | None,
    service: ServiceConfig,
    *,
    ports: Mapping[str, int] | None = None,
    uses: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, str]:
    """The variables hive.yaml sets for the service (global, then its own; dotenv files
    read now), without the base environment: see :func:`build_environment`."""
    if project is None:
        global_spec = EnvironmentSpec()
    elif isinstance(project, EnvironmentSpec):
        global_spec = project
    elif isinstance(project, HiveConfig):
        global_spec = project.environment
    else:
        global_spec = project.config.environment
    configured = _scope_values(global_spec)
    configured.update(_scope_values(service.environment))
    if ports is not None or uses is not None:
        configured = {
            key: render_runtime(value, ports=ports or {}, uses=uses)
            for key, value in configured.items()
        }
    return configured
