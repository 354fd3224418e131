"""Secrets out of what clients receive: every frame the daemon sends passes here.

The values a source's configuration took from the daemon's environment through
``${env.X}`` (and from its dotenv files) end up in commands, paths and URLs, and from
there in errors, events, health checks and the daemon's notes in a service's log. Rather
than trust each of those places, :meth:`Connection.encode <hive.daemon.server.Connection.encode>`
asks :meth:`SecretRedactor.found_in` whether an encoded frame holds one of the values (a
substring search in C, nothing when no source has any), and only then re-encodes the
message with each value shown as its reference (``${env.API_TOKEN}``). Clients below
``admin`` (read, operate, and core plugins given those scopes, their events included) get
the hidden form; an admin, who can read config.toml and run commands as the daemon's
user, gets the values (docs/protocol.md, "Secrets"). Fields that name things (a service,
a path, a state, a level) are never rewritten: a value that happens to equal ``debug``
or to be a home directory must not turn an identifier into a reference.

A source's values are kept for two loads, so the processes a reload is replacing, still
running with the old values, are hidden too.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from hive.config import SecretMask

__all__ = ["SecretRedactor"]

T = TypeVar("T")


class SecretRedactor:
    def __init__(self) -> None:
        # source -> (the values of its previous load, those of its current one)
        self._sources: dict[str, tuple[SecretMask, SecretMask]] = {}
        self.mask = SecretMask()
        self._needles: dict[bool, tuple[bytes, ...]] = {False: (), True: ()}

    def loaded(self, source: str, secrets: dict[str, str]) -> None:
        """``source`` loaded (or reloaded) with these values (``value -> ${env.X}``)."""
        previous = self._sources.get(source)
        current = SecretMask(secrets)
        older = previous[1] if previous is not None else SecretMask()
        if not current and not older:
            if self._sources.pop(source, None) is not None:
                self._rebuild()
            return
        self._sources[source] = (older, current)
        self._rebuild()

    def forget(self, source: str) -> None:
        if self._sources.pop(source, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        self.mask = SecretMask.union(mask for pair in self._sources.values() for mask in pair)
        values = list(self.mask.shown_as)
        # As each transport writes a string: msgpack as its UTF-8, JSON escaped.
        self._needles = {
            False: tuple(value.encode("utf-8", "surrogateescape") for value in values),
            True: tuple(msgspec.json.encode(value)[1:-1] for value in values),
        }

    def found_in(self, encoded: bytes, *, json: bool) -> bool:
        """Whether a frame (as ``json`` lines or msgpack) may hold a secret value."""
        return any(needle in encoded for needle in self._needles[json])

    def scrub_if_found(self, message: T) -> T:
        """``message`` scrubbed when its msgpack form holds a value (events to plugins)."""
        if not self._needles[False] or not self.found_in(msgspec.msgpack.encode(message), json=False):
            return message
        return self.scrub(message)

    def scrub(self, message: T) -> T:
        """``message`` with every secret value in its strings replaced (a copy where needed)."""
        scrubbed: T = _scrubbed(message, self.mask)
        return scrubbed


# String fields that name or classify rather than say: kept as they are (see the
# module's doc). A field of these names that holds a structure is scrubbed inside.
_NAMES = frozenset({
    "fqn", "name", "source", "service", "services", "project", "instance", "path", "home",
    "socket", "directory", "file", "state", "desired", "level", "stream", "kind", "type",
    "scope", "runner", "generation", "health", "container_id", "image",
})


def _scrubbed(value: Any, mask: SecretMask) -> Any:
    if isinstance(value, str):
        return mask.hide(value)
    if isinstance(value, msgspec.Struct):
        changes = {}
        for name in value.__struct_fields__:
            item = getattr(value, name)
            if name in _NAMES and isinstance(item, str):
                continue
            hidden = _scrubbed(item, mask)
            if hidden is not item:
                changes[name] = hidden
        return msgspec.structs.replace(value, **changes) if changes else value
    if isinstance(value, list | tuple):
        items = [_scrubbed(item, mask) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        pairs = [(_scrubbed(key, mask), _scrubbed(item, mask)) for key, item in value.items()]
        if all(k is old_k and v is old_v for (k, v), (old_k, old_v) in zip(pairs, value.items(), strict=True)):
            return value
        return dict(pairs)
    return value
