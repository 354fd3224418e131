"""Sources: where services come from.

A **yaml** source is a project directory (``hive.yaml``, ``.hive/hive.yaml`` or
``.adi/hive.yaml``); a **sqlite** source is a database whose services are created,
updated and deleted through the API; the **default** source is ``$HIVE_HOME/hive.yaml``
when it exists. The registry of added sources lives in ``state.db``.

A reload computes a plan from the effective configuration of each service (defaults
merged, variables resolved): only the services whose configuration changed restart,
new ones start, removed ones stop. An invalid file changes nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from hive.config import (
    ConfigError,
    HiveConfig,
    HookStep,
    LoadedProject,
    ServiceConfig,
    find_config_file,
    global_environment,
    load_project,
    parse_service_entry,
    service_fingerprint,
    validate_services,
)
from hive_client import (
    ErrorCode,
    InstanceOutcome,
    LogLevel,
    SourceAdded,
    SourceChanged,
    SourceInfo,
    SourceRemoved,
    validate_name,
)
from hive_client.protocol import ReloadPlan

from .errors import RequestError
from .exposure import hash_secret, is_hashed
from .redaction import SecretRedactor
from .sqlite_source import SqliteSourceError, SqliteSourceFile, merge_patch
from .store import SourceRow, StateRepository, StateStore
from .supervision import SourceChange, Supervisor

if TYPE_CHECKING:
    from .events import EventBus
    from .hooks import HookOutcome
    from .logs import LogHub

__all__ = ["Source", "SourceRegistry"]

log = logging.getLogger("hive.sources")

DEFAULT_SOURCE = "default"
SQLITE_SOURCE_FILE = "hive.db"
# The log of a source's global hooks: ``SOURCE:@hooks`` (no service name has an @).
GLOBAL_HOOKS_LOG = "@hooks"


class Source:
    def __init__(self, name: str, path: Path, source_type: str, *, enabled: bool = True,
                 builtin: bool = False, owner: str | None = None) -> None:
        self.name = name
        self.path = path
        self.source_type = source_type
        self.enabled = enabled
        self.builtin = builtin
        # The plugin that decides which of its services run after a daemon restart
        # (None: the daemon starts what was running). See Supervisor.set_source_owner.
        self.owner = owner
        self.error: str | None = None
        self.project: LoadedProject | None = None
        self.database: SqliteSourceFile | None = None
        self.services: dict[str, ServiceConfig] = {}
        self.warnings: list[str] = []

    @property
    def config(self) -> HiveConfig | None:
        return self.project.config if self.project is not None else None


def slugify(text: str) -> str:
    """A valid source name from a directory or file name (``My App`` → ``my-app``)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    slug = re.sub(r"^[^a-z]+", "", slug)
    return slug


def _default_name(source_type: str, canonical: Path) -> str:
    """The directory (or database) a source is named after when no name is given."""
    if source_type == "sqlite":
        return canonical.parent.name if canonical.name == SQLITE_SOURCE_FILE else canonical.stem
    if canonical.is_file():
        parent = canonical.parent
        return parent.parent.name if parent.name in (".hive", ".adi") else parent.name
    return canonical.name


def detect(path: Path) -> tuple[str, Path]:
    """(source type, canonical path) for what the user pointed at."""
    if path.suffix == ".db" and not path.is_dir():
        return "sqlite", path
    if path.is_dir():
        if (path / SQLITE_SOURCE_FILE).is_file():
            return "sqlite", path / SQLITE_SOURCE_FILE
        if find_config_file(path) is not None:
            return "yaml", path
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        return "yaml", path
    raise RequestError(
        ErrorCode.INVALID_REQUEST,
        f"could not detect a source at {path}: expected a directory with hive.yaml "
        f"(or .hive/hive.yaml, .adi/hive.yaml), a hive.db, or a .db file",
    )


def _shown(text: str, limit: int = 120) -> str:
    """A path as an error message shows it: printable, and not kilobytes long."""
    shown = text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return shown if shown.isprintable() else repr(shown)


def _source_path(text: str) -> Path:
    """The absolute path ``add_source`` names; RequestError when it cannot name a source.

    A new ``.db`` is created, but only in a directory that exists: a typo must not leave
    directories behind wherever the daemon may write.
    """
    if "\0" in text:
        raise RequestError.invalid(f"source path {_shown(text)} contains a NUL character")
    path = Path(os.path.abspath(os.path.expanduser(text)))
    try:
        if path.exists():
            return path
        if path.suffix != ".db":
            raise RequestError.not_found(f"{_shown(str(path))} does not exist")
        if not path.parent.is_dir():
            raise RequestError.not_found(
                f"{_shown(str(path.parent))} does not exist: a new SQLite source is created "
                "in an existing directory"
            )
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES: a path no source can live at
        raise RequestError.invalid(f"source path {_shown(str(path))}: {exc.strerror or exc}") from None
    return path


class SourceRegistry:
    def __init__(
        self, *, home: Path, store: StateStore, bus: EventBus, logs: LogHub, supervisor: Supervisor
    ) -> None:
        """``home``: HIVE_HOME (its hive.yaml, if any, is the default source)."""
        self._home = home
        self._bus = bus
        self._logs = logs
        self.supervisor = supervisor
        self.sources: dict[str, Source] = {}
        self._stored = StateRepository(store)  # the registry of added sources, on disk
        self._lock = anyio.Lock()  # one structural change (add, remove, reload) at a time
        # The values the sources took from the environment, hidden in what clients receive.
        self.secrets = SecretRedactor()

    # --- queries ----------------------------------------------------------------------

    def loaded(self, name: str) -> bool:
        """Whether source ``name`` loaded completely (no error, no warning)."""
        source = self.sources.get(name)
        return source is not None and source.error is None and not source.warnings

    def names(self) -> list[str]:
        return sorted(self.sources)

    def get(self, name: str) -> Source:
        source = self.sources.get(name)
        if source is None:
            known = ", ".join(self.names()) or "none"
            shown = repr(name) if len(name) <= 100 else f"{name[:100]!r}... ({len(name)} characters)"
            raise RequestError.not_found(f"no source {shown} (sources: {known})")
        return source

    def info(self, source: Source) -> SourceInfo:
        running = self._running(source)
        if source.error and not source.services:
            status = "error"
        elif not source.enabled:
            status = "stopped"
        else:
            status = "running" if running else "loaded"
        return SourceInfo(
            name=source.name,
            path=str(source.path),
            source_type=source.source_type,
            enabled=source.enabled,
            service_count=len(source.services),
            status=status,
            error=source.error,
            owner=source.owner,
        )

    # --- loading ----------------------------------------------------------------------

    async def load_all(self) -> None:
        """The default source and every registered one; a broken one is kept, with its error."""
        home = self._home
        # A state.db from before every service had a row: a service without one is not
        # new, only never started; this start writes the rows, the next may tell.
        rows_known = await self._stored.rows_for_every_service()
        if find_config_file(home) is not None:
            source = Source(DEFAULT_SOURCE, home, "yaml", builtin=True)
            await self._load_initial(source, rows_known)
        for row in await self._stored.load_sources():
            source = Source(row.name, Path(row.path), row.source_type, enabled=row.enabled, owner=row.owner)
            self.supervisor.set_source_owner(source.name, source.owner)
            await self._load_initial(source, rows_known)
        if not rows_known:
            await self._stored.mark_rows_for_every_service()

    async def _load_initial(self, source: Source, rows_known: bool) -> None:
        self.sources[source.name] = source
        try:
            services = await self._read(source)
        except RequestError as exc:
            source.error = exc.message
            log.error("source %s: %s", source.name, exc.message)
            return
        self._install(source, services)
        # The file may differ from what the last daemon ran: converge as a reload would.
        self.supervisor.settle_loaded(source.name, self._fqns(source), enabled=source.enabled,
                                      complete=self.loaded(source.name), start_added=rows_known)

    async def _read(self, source: Source) -> dict[str, ServiceConfig]:
        """Parse the source as it is on disk now, changing nothing."""
        if source.source_type == "yaml":
            try:
                project = await anyio.to_thread.run_sync(
                    lambda: load_project(source.path, source_name=source.name)
                )
            except ConfigError as exc:
                raise RequestError(ErrorCode.INVALID_CONFIG, _config_message(exc)) from exc
            source.project = project
            source.warnings = [str(w) for w in project.warnings]
            return await _protect_secrets(dict(project.config.services))
        if source.database is None:
            try:
                source.database = await SqliteSourceFile.open(source.path, create=True)
            except SqliteSourceError as exc:
                raise RequestError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        try:
            rows = await source.database.services()
        except SqliteSourceError as exc:
            raise RequestError(ErrorCode.INVALID_CONFIG, str(exc)) from exc
        services: dict[str, ServiceConfig] = {}
        source.warnings = []
        for name, (enabled, entry) in rows.items():
            if not enabled:
                continue
            try:
                services[name] = self._parse_entry(source, name, entry)
            except RequestError as exc:
                source.warnings.append(f"{name}: {exc.message}")
        return await _protect_secrets(services)

    def _parse_entry(self, source: Source, name: str, entry: Any) -> ServiceConfig:
        problem = validate_name(name, "service name")
        if problem:
            raise RequestError(ErrorCode.INVALID_REQUEST, problem)
        try:
            return parse_service_entry(
                name, entry, root=source.path.parent, source_name=source.name,
                file=f"{source.path.name}:{name}",
            )
        except ConfigError as exc:
            raise RequestError(ErrorCode.INVALID_CONFIG, _config_message(exc)) from exc

    def _fingerprint(self, source: Source, config: ServiceConfig) -> bytes:
        return service_fingerprint(config, project=source.config)

    def _install(self, source: Source, services: dict[str, ServiceConfig]) -> None:
        source.services = services
        source.error = None
        self._loaded_secrets(source)
        for config in services.values():
            self.supervisor.register(source.name, config, source.config, self._fingerprint(source, config))

    def _loaded_secrets(self, source: Source) -> None:
        self.secrets.loaded(source.name, source.project.secrets if source.project is not None else {})

    async def _prepare(self, source: Source, names: Iterable[str]) -> None:
        """Runtime files of new services, made ahead of their first start."""
        await self._logs.prepare(f"{source.name}:{name}" for name in names)

    # --- add / remove -----------------------------------------------------------------

    async def add(self, path_text: str, name: str | None, owner: str | None = None) -> tuple[Source, bool]:
        """Register a source; adding a known path again returns it (reloaded, and owned
        by ``owner`` if one is given)."""
        if owner is not None:
            problem = validate_name(owner, "source owner")
            if problem:
                raise RequestError(ErrorCode.INVALID_REQUEST, problem)
        path = _source_path(path_text)
        source_type, canonical = detect(path)
        async with self._lock:
            for existing in self.sources.values():
                if existing.path == canonical:
                    if name and name != existing.name:
                        raise RequestError(
                            ErrorCode.ALREADY_EXISTS,
                            f"{canonical} is already registered as source {existing.name!r}",
                        )
                    if owner is not None and owner != existing.owner and not existing.builtin:
                        await self._stored.set_source_owner(existing.name, owner)
                        existing.owner = owner
                        self.supervisor.set_source_owner(existing.name, owner)
                    await self._reload_locked(existing, dry_run=False)
                    return existing, False
            if name is None:
                base = _default_name(source_type, canonical)
                name = slugify(base)
                if not name:
                    raise RequestError(
                        ErrorCode.INVALID_REQUEST,
                        f"cannot make a source name from {base!r}; pass one with --name",
                    )
            problem = validate_name(name, "source name")
            if problem:
                raise RequestError(ErrorCode.INVALID_REQUEST, problem)
            if name in self.sources:
                raise RequestError(
                    ErrorCode.ALREADY_EXISTS,
                    f"source {name!r} already exists (at {self.sources[name].path}); pick another --name",
                )
            source = Source(name, canonical, source_type, owner=owner)
            services = await self._read(source)
            self._check_conflicts(source, services)
            await self._stored.add_source(SourceRow(name=name, path=str(canonical), source_type=source_type,
                                                    owner=owner))
            self.sources[name] = source
            self.supervisor.set_source_owner(name, owner)
            self._install(source, services)
            await self._prepare(source, services)
        self._bus.publish(SourceAdded(name=name, path=str(canonical), source_type=source_type))
        log.info("added source %s (%s, %d services)", name, canonical, len(services))
        return source, True

    def _check_conflicts(self, source: Source, services: dict[str, ServiceConfig]) -> None:
        """Ports already claimed by another source's service."""
        claimed: dict[int, str] = {}
        for other in self.sources.values():
            if other.name == source.name:
                continue
            for config in other.services.values():
                for port_name, port in config.ports().items():
                    if port:  # (0: the daemon picks one)
                        claimed[port] = f"{other.name}:{config.name}.{port_name}"
        problems = []
        for config in services.values():
            for port_name, port in config.ports().items():
                if port in claimed:
                    problems.append(
                        f"port {port} conflicts: {claimed[port]} vs {source.name}:{config.name}.{port_name}"
                    )
            try:
                self._check_expose_name(source, config)
            except RequestError as exc:
                problems.append(exc.message)
        if problems:
            raise RequestError(ErrorCode.CONFLICT, "; ".join(problems))

    def _check_expose_name(self, source: Source, config: ServiceConfig) -> None:
        """Expose names are unique across every source."""
        if config.expose is None:
            return
        owner = self.supervisor.expose_owner(config.expose.name)
        if owner is not None and owner != f"{source.name}:{config.name}":
            raise RequestError(
                ErrorCode.CONFLICT,
                f"expose name {config.expose.name!r} conflicts: {owner} vs {source.name}:{config.name}",
            )

    async def remove(self, name: str) -> None:
        async with self._lock:
            source = self.get(name)
            if source.builtin:
                raise RequestError(
                    ErrorCode.INVALID_REQUEST,
                    f"the default source lives in {source.path}; remove its hive.yaml instead",
                )
            await self.supervisor.apply(SourceChange(
                source=name, project=None, removed=[f"{name}:{service_name}" for service_name in source.services]))
            await self._stored.remove_source(name)
            del self.sources[name]
            self.secrets.forget(name)
            self.supervisor.set_source_owner(name, None)
            if source.database is not None:
                await source.database.close()
        self._bus.publish(SourceRemoved(name=name))

    # --- reload -----------------------------------------------------------------------

    async def reload(self, name: str, *, dry_run: bool) -> ReloadPlan:
        async with self._lock:
            return await self._reload_locked(self.get(name), dry_run=dry_run)

    async def reload_all(self) -> tuple[str, bool]:
        """Every source (SIGHUP); a broken one keeps running as it was. What happened, and
        whether every source reloaded."""
        changed, failed = 0, []
        async with self._lock:
            for source in list(self.sources.values()):
                try:
                    plan = await self._reload_locked(source, dry_run=False)
                    changed += len(plan.start) + len(plan.stop) + len(plan.restart)
                except RequestError as exc:
                    failed.append(f"{source.name}: {exc.message}")
        summary = f"sources reloaded ({changed} service changes)"
        if failed:
            summary += "; kept the running configuration of " + "; ".join(failed)
        return summary, not failed

    async def _reload_locked(self, source: Source, *, dry_run: bool) -> ReloadPlan:
        old_project = source.project
        try:
            services = await self._read(source)
        except RequestError as exc:
            source.project = old_project
            if not dry_run:
                self._bus.publish(SourceChanged(name=source.name, change="reload_failed", message=exc.message))
            raise
        change = SourceChange(source=source.name, project=source.config)
        for name, config in services.items():
            fqn = f"{source.name}:{name}"
            current = self.supervisor.fingerprint(fqn)
            fingerprint = self._fingerprint(source, config)
            if current is None:
                change.added[fqn] = (config, fingerprint)
            elif current != fingerprint:
                change.changed[fqn] = (config, fingerprint)
            elif (reason := await self.supervisor.outdated(fqn)) is not None:
                # hive.yaml is the same, what it names is not (a compose file, an image).
                log.info("%s: %s: restarted by the reload", fqn, reason)
                change.changed[fqn] = (config, fingerprint)
            else:
                change.unchanged[fqn] = (config, fingerprint)
        change.removed = [f"{source.name}:{name}" for name in source.services if name not in services]
        plan = ReloadPlan(name=source.name, start=list(change.added), stop=list(change.removed),
                          restart=list(change.changed), unchanged=list(change.unchanged))
        if dry_run:
            source.project = old_project
            return plan
        change.start_added = source.enabled and self.supervisor.wanted_running(self._fqns(source))
        source.services = services
        source.error = None
        self._loaded_secrets(source)
        await self._prepare(source, (fqn.partition(":")[2] for fqn in change.added))
        await self.supervisor.apply(change)
        plan.applied = True
        self._bus.publish(SourceChanged(
            name=source.name, change="reloaded",
            message=f"{len(plan.start)} new, {len(plan.restart)} changed, {len(plan.stop)} removed",
        ))
        return plan

    # --- enable / disable / start / stop -----------------------------------------------

    async def set_enabled(self, name: str, enabled: bool) -> None:
        source = self.get(name)
        if source.builtin:
            raise RequestError(ErrorCode.INVALID_REQUEST, "the default source cannot be disabled")
        if not enabled:
            await self.supervisor.stop(self._fqns(source))
        source.enabled = enabled
        await self._stored.set_source_enabled(name, enabled)
        self._bus.publish(SourceChanged(name=name, change="enabled" if enabled else "disabled"))

    def _fqns(self, source: Source, names: list[str] | None = None) -> list[str]:
        chosen = names or list(source.services)
        unknown = [n for n in chosen if n not in source.services]
        if unknown:
            raise RequestError.not_found(
                f"no service {', '.join(unknown)} in source {source.name!r} "
                f"(services: {', '.join(sorted(source.services)) or 'none'})"
            )
        return [f"{source.name}:{n}" for n in chosen]

    async def start(self, name: str, services: list[str]) -> list[InstanceOutcome]:
        """Start a source's services (all, or those named). Starting the whole source runs
        its global hooks: pre-up before any service (a failure starts nothing), post-up
        once all are up (a failure stops them again); either failure is the answer.
        Services already running keep running; the hooks run only when none was."""
        source = self.get(name)
        self._require_enabled(source)
        fqns = self._fqns(source, services)
        # Only a stack coming up from nothing runs them: `hive up` on a running one does not.
        whole = source.config is not None and not services and not self._running(source)
        hooks = source.config.hooks if whole and source.config is not None else None
        if hooks is not None and hooks.pre_up:
            outcome = await self._global_hooks(source, "pre-up", hooks.pre_up)
            if not outcome.ok:
                raise RequestError(
                    ErrorCode.HOOK_FAILED, f"source {name}: {outcome.message}; no service was started"
                )
        outcomes = await self.supervisor.start(fqns)
        if hooks is not None and hooks.post_up and all(o.result == "done" for o in outcomes):
            outcome = await self._global_hooks(source, "post-up", hooks.post_up)
            if not outcome.ok:
                await self.stop(name)
                raise RequestError(
                    ErrorCode.HOOK_FAILED,
                    f"source {name}: {outcome.message}; its services were stopped again",
                )
        return outcomes

    async def stop(self, name: str) -> list[InstanceOutcome]:
        """Stop a source's services; global pre-down and post-down hooks around the stop
        when any of them runs (a failing down hook is reported, never blocks the stop).
        What the stop did to each instance: see Supervisor.stop()."""
        source = self.get(name)
        fqns = self._fqns(source)
        running = self._running(source)
        await self._down_hooks(source, "pre-down", running)
        outcomes = await self.supervisor.stop(fqns)
        if any(o.result != "done" for o in outcomes):  # they run once everything is down
            if running and source.config is not None and source.config.hooks.post_down:
                outcomes.append(InstanceOutcome(fqn=f"{name}:{GLOBAL_HOOKS_LOG}", result="pending", state="stopping",
                                                reason="its post-down hooks did not run"))
        else:
            await self._down_hooks(source, "post-down", running)
        return outcomes

    async def shutdown(self, *, keep_services: bool) -> None:
        """The daemon stops: its services stop too (unless kept), with the global down
        hooks of each source that had some running."""
        # Not shielded here: the daemon runs this under its shutdown_timeout, which must
        # hold; what is still running when it passes is left for the next daemon.
        running = [] if keep_services else [s for s in self.sources.values() if self._running(s)]
        for source in running:
            await self._down_hooks(source, "pre-down", True)
        await self.supervisor.shutdown(keep_services=keep_services)
        for source in running:
            await self._down_hooks(source, "post-down", True)

    def _running(self, source: Source) -> bool:
        return self.supervisor.any_live(self._fqns(source))

    async def _down_hooks(self, source: Source, event: str, running: bool) -> None:
        config = source.config
        if config is None or not running:
            return
        steps = config.hooks.pre_down if event == "pre-down" else config.hooks.post_down
        if steps:
            outcome = await self._global_hooks(source, event, steps)
            if not outcome.ok:
                log.warning("source %s: %s (the stop goes on)", source.name, outcome.message)

    async def _global_hooks(self, source: Source, event: str, steps: Sequence[HookStep]) -> HookOutcome:
        """Run a source's global hooks; their output goes to the ``SOURCE:@hooks`` log."""
        assert source.config is not None
        key = f"{source.name}:{GLOBAL_HOOKS_LOG}"
        env = global_environment(source.config, self.supervisor.hook_base_env)
        env["HIVE_SOURCE_NAME"] = source.name
        env.setdefault("HIVE_ROLLOUT_TYPE", "none")

        def output(stream: str, text: str) -> None:
            line = text if stream == "hive" else f"[global {event} hook] {text}"
            self._logs.captured(key, "hook", line)

        from .hooks import run_hooks  # only projects with hooks pay for it

        outcome = await run_hooks(event, steps, env=env, output=output,
                                  run_container=self.supervisor.container_steps(key))
        if not outcome.ok:
            self._logs.note(key, outcome.message, LogLevel.ERROR)
        return outcome

    def _require_enabled(self, source: Source) -> None:
        if not source.enabled:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                f"source {source.name!r} is disabled; enable it first (hive source enable {source.name})",
            )
        if source.error and not source.services:
            raise RequestError(ErrorCode.INVALID_CONFIG, f"source {source.name!r} failed to load: {source.error}")

    def require_startable(self, fqn: str) -> None:
        self._require_enabled(self.get(fqn.partition(":")[0]))

    # --- SQLite source services ----------------------------------------------------------

    def _sqlite(self, name: str) -> Source:
        source = self.get(name)
        if source.source_type != "sqlite" or source.database is None:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                f"source {name!r} is a {source.source_type} source: services are created only in "
                "SQLite sources (edit its hive.yaml instead)",
            )
        return source

    def _validate_together(self, source: Source, services: dict[str, ServiceConfig]) -> None:
        errors = [i for i in validate_services(services, file=source.path.name) if i.severity == "error"]
        if errors:
            raise RequestError(ErrorCode.INVALID_CONFIG, "; ".join(str(i) for i in errors))

    async def create_service(self, source_name: str, name: str, entry: dict[str, Any], start: bool) -> str:
        async with self._lock:
            source = self._sqlite(source_name)
            if name in source.services:
                raise RequestError(ErrorCode.ALREADY_EXISTS, f"service {source_name}:{name} already exists")
            config = self._parse_entry(source, name, entry)
            self._validate_together(source, {**source.services, name: config})
            self._check_expose_name(source, config)
            config, entry = await _protect_entry(config, entry)
            assert source.database is not None
            try:
                await source.database.insert(name, entry)
            except SqliteSourceError as exc:
                raise RequestError(ErrorCode.STORAGE, str(exc)) from exc
            source.services[name] = config
            self.supervisor.register(source.name, config, None, self._fingerprint(source, config))
            await self._prepare(source, [name])
        fqn = f"{source_name}:{name}"
        if start:
            await self.supervisor.start([fqn], wait=None)
        return fqn

    async def update_service(self, fqn: str, patch: dict[str, Any]) -> None:
        source_name, _, name = fqn.partition(":")
        async with self._lock:
            source = self._sqlite(source_name)
            if name not in source.services:
                raise RequestError.not_found(f"no service {fqn!r}")
            assert source.database is not None
            stored = (await source.database.services()).get(name)
            entry = merge_patch(stored[1] if stored else {}, patch)
            config = self._parse_entry(source, name, entry)
            self._validate_together(source, {**source.services, name: config})
            self._check_expose_name(source, config)
            config, entry = await _protect_entry(config, entry)
            try:
                await source.database.update(name, entry)
            except SqliteSourceError as exc:
                raise RequestError(ErrorCode.STORAGE, str(exc)) from exc
            source.services[name] = config
            fingerprint = self._fingerprint(source, config)
            change = SourceChange(source=source.name, project=None)
            if fingerprint != self.supervisor.fingerprint(fqn):
                change.changed[fqn] = (config, fingerprint)
            else:
                change.unchanged[fqn] = (config, fingerprint)
            await self.supervisor.apply(change)

    async def delete_service(self, fqn: str) -> None:
        source_name, _, name = fqn.partition(":")
        async with self._lock:
            source = self._sqlite(source_name)
            if name not in source.services:
                raise RequestError.not_found(f"no service {fqn!r}")
            await self.supervisor.unregister(fqn, forget=True)
            assert source.database is not None
            try:
                await source.database.delete(name)
            except SqliteSourceError as exc:
                raise RequestError(ErrorCode.STORAGE, str(exc)) from exc
            del source.services[name]

    async def close(self) -> None:
        for source in self.sources.values():
            if source.database is not None:
                await source.database.close()
                source.database = None


async def _protect_secrets(services: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
    """Every expose secret replaced by its salted hash, before anything keeps it."""
    for name, config in list(services.items()):
        services[name] = await _protect_config(config)
    return services


async def _protect_config(config: ServiceConfig) -> ServiceConfig:
    expose = config.expose
    if expose is None or expose.secret is None or is_hashed(expose.secret):
        return config
    identity = f"{config.source}:{config.name}:{expose.name}"
    hashed = await anyio.to_thread.run_sync(hash_secret, expose.secret, identity)
    return msgspec.structs.replace(config, expose=msgspec.structs.replace(expose, secret=hashed))


async def _protect_entry(config: ServiceConfig, entry: dict[str, Any]) -> tuple[ServiceConfig, dict[str, Any]]:
    """The config and the row to store, with the expose secret hashed in both."""
    protected = await _protect_config(config)
    if protected is config:
        return config, entry
    assert protected.expose is not None
    return protected, {**entry, "expose": {**entry["expose"], "secret": protected.expose.secret}}


def _config_message(error: ConfigError) -> str:
    return "\n".join(str(issue) for issue in error.issues if issue.severity == "error") or str(error)
