"""Entry points: find and load a project's ``hive.yaml``, parse one API service entry,
cross-service validation and fingerprints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ._build import Builder
from ._decode import Decoder, describe
from ._environment import read_dotenv_file
from ._issues import ConfigError, ConfigIssue, IssueSink, KeyPath, format_path, sort_issues
from ._model import BLUE_GREEN_RUNNERS, HiveConfig, ServiceConfig
from ._read import read_capped
from ._secrets import SecretMask
from ._templates import interpolate
from ._validate import check_services
from ._yaml import MAX_DEPTH, parse_yaml

CONFIG_FILENAMES = ("hive.yaml", ".hive/hive.yaml", ".adi/hive.yaml")
SUPPORTED_VERSION = "1"



class LoadedProject(msgspec.Struct):
    file: Path
    root: Path
    config: HiveConfig
    warnings: list[ConfigIssue]
    # Human notes on parsed-but-not-active features ("services.web.proxy: routing is not active yet").
    inactive: list[str]
    source_name: str = ""
    # Values ``${env.X}`` read (the environment's or the dotenv files'), each shown as its
    # reference: what a daemon hides in what its clients see (see _secrets.SecretMask).
    secrets: dict[str, str] = {}


def find_config_file(root: Path) -> Path | None:
    """The project's config file, in order of preference, or None."""
    for name in CONFIG_FILENAMES:
        candidate = Path(root) / name
        if candidate.is_file():
            return candidate
    return None


def find_project_root(start: Path) -> Path | None:
    """Walks up from ``start`` to the first directory that has a config file."""
    current = Path(os.path.abspath(start))
    for directory in (current, *current.parents):
        if find_config_file(directory) is not None:
            return directory
    return None


def _root_of(file: Path) -> Path:
    return file.parent.parent if file.parent.name in (".hive", ".adi") else file.parent


def _display_name(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root))
    except ValueError:
        return str(file)


def _fail(file: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([ConfigIssue("error", file, line, "", message)])


def load_project(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    source_name: str | None = None,
) -> LoadedProject:
    """Loads, interpolates and validates a project's config. ``path`` is the project directory
    or the YAML file itself. Raises ConfigError with every error found (never anything else for
    bad input)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        found = find_config_file(path)
        if found is None:
            raise _fail(
                str(path), None, f"no config file found (looked for {', '.join(CONFIG_FILENAMES)})"
            )
        file, root = found, path
    else:
        file, root = path, _root_of(path)
    display = _display_name(file, root)
    try:
        raw = read_capped(file)
    except OSError as exc:
        raise _fail(display, None, f"Failed to read config file: {exc.strerror or exc}") from None
    except ValueError as exc:  # over the cap
        raise _fail(display, None, f"Failed to read config file: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise _fail(
            display, line, f"Failed to read config file: not valid UTF-8 (byte 0x{byte})"
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise _fail(display, line, "Failed to read config file: contains a NUL character")
    document = parse_yaml(text, display)
    data = document.data
    if not isinstance(data, dict):
        raise _fail(
            display,
            1,
            f"expected a mapping with 'version' and 'services' at the top level, got {describe(data)}",
        )
    return _load_data(
        data,
        document.lines,
        document.scalar_text,
        file=file,
        root=root,
        display=display,
        environ=os.environ if environ is None else environ,
        source_name=source_name or root.name or "default",
    )


def _load_data(
    data: dict[str, Any],
    lines: dict[KeyPath, int],
    scalar_text: dict[KeyPath, str],
    *,
    file: Path,
    root: Path,
    display: str,
    environ: Mapping[str, str],
    source_name: str,
) -> LoadedProject:
    sink = IssueSink(display, lines)
    # A "\0" escape puts a NUL in a value: no path, command or variable can hold one.
    for path, message in _nul_problems(data, ()):
        sink.error(path, message)
    sink.raise_if_errors()
    preloaded = _preload_dotenv(data, root, sink)
    secrets: dict[str, str] = {}

    def resolve(plugin: str, key: str, service: str | None) -> str | None:
        if plugin == "env":
            value = environ.get(key)
            if value is None:
                value = preloaded.get(key)
            if value is not None:
                secrets[value] = f"${{env.{key}}}"
            return value
        if plugin == "service" and key == "name":
            return service
        return None

    data = _interpolate_tree(data, (), sink, resolve)
    mask = SecretMask(secrets)
    try:
        project = _build_project(data, lines, scalar_text, sink, file=file, root=root, source_name=source_name)
    except ConfigError as exc:  # an error that quotes a value must not show a secret
        raise ConfigError([_hidden(i, mask) for i in exc.issues], [_hidden(i, mask) for i in exc.warnings]) from None
    project.warnings = [_hidden(issue, mask) for issue in project.warnings]
    project.secrets = mask.shown_as
    return project


def _hidden(issue: ConfigIssue, mask: SecretMask) -> ConfigIssue:
    message = mask.hide(issue.message)
    return issue if message is issue.message else msgspec.structs.replace(issue, message=message)


def _build_project(
    data: dict[str, Any],
    lines: dict[KeyPath, int],
    scalar_text: dict[KeyPath, str],
    sink: IssueSink,
    *,
    file: Path,
    root: Path,
    source_name: str,
) -> LoadedProject:
    """The typed project from interpolated data; ConfigError with every error found."""
    _check_version(data, sink)

    builder = Builder(
        Decoder(sink, scalar_text),
        root=str(root),
        source=source_name,
        lines=lines,
        scalar_text=scalar_text,
    )
    config = builder.config(data)
    services = data.get("services")
    declared = list(services) if isinstance(services, dict) else []
    built = config.services if config is not None else builder.built_services
    # In file order, the services with errors as far as they decoded.
    everything = {name: built.get(name) or builder.sketches[name] for name in declared
                  if name in built or name in builder.sketches}
    check_services(everything, sink, declared=declared)
    sink.raise_if_errors()
    assert config is not None
    return LoadedProject(
        file=file,
        root=root,
        config=config,
        warnings=sort_issues(sink.warnings),
        inactive=inactive_notes(config),
        source_name=source_name,
    )


_NUL_MESSAGE = "contains a NUL character (\\0), which no path, command or variable can hold"


def _nul_problems(value: object, path: KeyPath) -> list[tuple[KeyPath, str]]:
    """Where plain data holds a NUL character: (key path, message), keys named in the message."""
    if isinstance(value, str):
        return [(path, _NUL_MESSAGE)] if "\0" in value else []
    found: list[tuple[KeyPath, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\0" in key:
                found.append((path, f"key {key!r} {_NUL_MESSAGE}"))
            else:
                found += _nul_problems(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nul_problems(item, (*path, index))
    return found


def _check_version(data: dict[str, Any], sink: IssueSink) -> None:
    if "version" not in data:
        sink.error(("version",), f"'version' is required (version: \"{SUPPORTED_VERSION}\")")
        return
    version = data["version"]
    if not isinstance(version, str):
        sink.error(
            ("version",),
            f'expected the string "{SUPPORTED_VERSION}", got {describe(version)}; '
            f'quote it: version: "{SUPPORTED_VERSION}"',
        )
    elif version != SUPPORTED_VERSION:
        # Another format version: its other keys would only produce noise.
        message = f'Unsupported version: {version}. Expected "{SUPPORTED_VERSION}"'
        raise ConfigError(
            [ConfigIssue("error", sink.file, sink.line_of(("version",)), "version", message)]
        )


def _preload_dotenv(data: dict[str, Any], root: Path, sink: IssueSink) -> dict[str, str]:
    """Parse-time dotenv (for `${env.X}` only): the top-level `environment.dotenv` files."""
    environment = data.get("environment")
    if not isinstance(environment, dict) or "dotenv" not in environment:
        return {}
    settings = environment["dotenv"] or {}
    if not isinstance(settings, dict):
        return {}
    base: KeyPath = ("environment", "dotenv")
    names: list[tuple[str, KeyPath]] = [(".env", base)]
    if isinstance(settings.get("files"), list):
        names = [
            (name, (*base, "files", index))
            for index, name in enumerate(settings["files"])
            if isinstance(name, str)
        ]
    elif isinstance(settings.get("file"), str):
        names = [(settings["file"], (*base, "file"))]
    values: dict[str, str] = {}
    for name, path in names:
        try:
            values.update(read_dotenv_file(root / name))
        except ConfigError as exc:
            sink.error(path, f"{exc.issues[0].message} ({name!r})")
    return values


def _interpolate_tree(value: Any, path: KeyPath, sink: IssueSink, resolve: Any) -> Any:
    """`${...}` in every string value (never in keys), before typing (§12)."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        service = path[1] if len(path) >= 2 and path[0] == "services" else None
        text, unresolved = interpolate(
            value,
            lambda plugin, key: resolve(plugin, key, service if isinstance(service, str) else None),
        )
        for reference, plugin in unresolved:
            sink.error(
                path,
                f"Unresolved variable: {reference} (no default provided){_hint(reference, plugin)}",
            )
        return text
    if isinstance(value, dict):
        return {
            key: _interpolate_tree(item, (*path, key), sink, resolve) for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate_tree(item, (*path, index), sink, resolve)
            for index, item in enumerate(value)
        ]
    return value


def _hint(reference: str, plugin: str) -> str:
    if reference == "${service.name}":
        return "; ${service.name} resolves only inside services.<name>"
    if plugin not in ("env", "service"):
        return f"; no parse-time plugin '{plugin}' is available"
    return ""


def inactive_notes(config: HiveConfig) -> list[str]:
    """Parsed-and-kept parts whose behaviour comes in later releases."""
    notes: list[str] = []
    if config.observability is not None:
        notes.append("observability: not active yet (settings are kept)")
    for name, service in config.services.items():
        prefix = f"services.{name}"
        if service.rollout is not None and service.rollout.type == "blue-green" \
                and service.runner.type not in BLUE_GREEN_RUNNERS:
            notes.append(
                f"{prefix}.rollout: blue-green rollout is active for script, docker and podman services; "
                f"this {service.runner.type} service runs on its blue ports and restarts as recreate"
            )
    return notes


# ---- API entries -------------------------------------------------------------------------------


class _NotPlainData(Exception):
    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _plain(value: object, path: KeyPath, depth: int = 0) -> Any:
    """A copy of API input as JSON-like data (str keys; lists, not tuples). NUL characters
    are for _nul_problems(), as in a file."""
    if depth > MAX_DEPTH:
        raise _NotPlainData(path, f"nesting deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotPlainData(path, f"mapping keys must be strings, got {describe(key)}")
            result[key] = _plain(item, (*path, key), depth + 1)
        return result
    if isinstance(value, list | tuple):
        return [_plain(item, (*path, index), depth + 1) for index, item in enumerate(value)]
    raise _NotPlainData(path, f"unsupported value of type {type(value).__name__}")


def parse_service_entry(
    name: str,
    entry: object,
    *,
    root: Path,
    source_name: str,
    file: str = "<api>",
) -> ServiceConfig:
    """One service mapping (the shape of a ``services.<name>`` entry, as plain data) from an API
    or SQLite source. No ``defaults`` and no ``${...}`` interpolation apply; the same per-service
    validation as a file, without cross-service checks. Raises ConfigError."""
    sink = IssueSink(file)
    if not isinstance(name, str):
        raise ConfigError(
            [
                ConfigIssue(
                    "error", file, None, "", f"service name must be a string, got {describe(name)}"
                )
            ]
        )
    path: KeyPath = ("services", name)
    try:
        plain = _plain(entry, path)
    except _NotPlainData as exc:
        raise ConfigError(
            [ConfigIssue("error", file, None, format_path(exc.path), exc.message)]
        ) from None
    nul = _nul_problems(plain, path)
    if nul:
        raise ConfigError([ConfigIssue("error", file, None, format_path(at), message) for at, message in nul])
    builder = Builder(Decoder(sink), root=os.path.abspath(root), source=source_name)
    service = builder.service(name, plain)
    sink.raise_if_errors()
    assert service is not None
    return service


def validate_services(services: Mapping[str, ServiceConfig], *, file: str) -> list[ConfigIssue]:
    """Cross-service checks (dependencies, cycles, ports, routes, expose names), for services from
    any source, e.g. a SQLite source after ``create_service``."""
    sink = IssueSink(file)
    check_services(services, sink)
    return sort_issues([*sink.errors, *sink.warnings])


# ---- fingerprints ------------------------------------------------------------------------------

_FINGERPRINT_ENCODER = msgspec.json.Encoder(order="deterministic")


def service_fingerprint(svc: ServiceConfig, *, project: HiveConfig | None = None) -> bytes:
    """The canonical encoding of the effective service config (defaults merged, ``${}``
    interpolated, paths resolved): equal bytes, equal config. With ``project``, the global
    environment and hooks are covered too, since they reach every service. Dotenv file
    contents are not (they are read at each start).

    The bytes themselves, not a digest of them: comparing a few kilobytes is exact and
    keeps the daemon from loading a hashing library just for this.
    """
    # Routes are left out: the proxy applies a route change on the fly, so it is no
    # reason to restart the service (and drop the requests it is serving).
    # So is watch: only `hive up --watch` reads it.
    if svc.proxy or svc.watch is not None:
        svc = msgspec.structs.replace(svc, proxy=[], watch=None)
    payload: list[Any] = [svc]
    if project is not None:
        payload += [project.environment, project.hooks]
    return _FINGERPRINT_ENCODER.encode(payload)
