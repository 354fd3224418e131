"""The compose file as one service sees it: interpolation for that service alone.

Compose fills in ``${VAR}`` across the whole file before it looks at the service it was
asked for, with the environment of the command. Hive starts each compose service with
that service's own environment, so a ``${VAR:?}`` written for another service (which
gets ``VAR`` when it starts) would stop this one from starting. :func:`one_service_document`
gives compose, on its standard input (``-f -``), the file where every ``$`` of the other
services (and of the top-level ``x-`` extension fields, already merged where YAML
anchors used them) is written ``$$``: compose reads those values as they are written,
and they stay defined (``depends_on``, ``links`` still name them). The service itself,
the services it ``extends``, and the top-level ``networks``, ``volumes``, ``secrets``
and ``configs`` it shares are interpolated as before. Compose runs in the original
file's directory, which is then its project directory: relative paths and ``.env`` are
found where they were. Nothing is written to disk (the file may name secrets).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["escaped_for", "one_service_document"]


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(item) for item in value]
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    return value


def _extended(services: dict[str, Any], service: str) -> set[str]:
    """``service`` and the services of the same file it extends, transitively."""
    chain: set[str] = set()
    name: Any = service
    while isinstance(name, str) and name not in chain and isinstance(services.get(name), dict):
        chain.add(name)
        extends = services[name].get("extends")
        if isinstance(extends, dict):
            name = None if extends.get("file") else extends.get("service")
        else:
            name = extends
    return chain


def escaped_for(document: Any, service: str) -> dict[str, Any] | None:
    """The compose document with what ``service`` does not use escaped; None if it is not
    a compose document with that service (compose then reports the problem itself)."""
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict) \
            or service not in document["services"]:
        return None
    services: dict[str, Any] = document["services"]
    kept = _extended(services, service)
    view = {key: _escape(value) if str(key).startswith("x-") else value for key, value in document.items()}
    view["services"] = {name: value if name in kept else _escape(value) for name, value in services.items()}
    return view


def one_service_document(path: str, service: str) -> bytes | None:
    """What compose should read to run ``service`` (see the module docstring), as JSON
    (a YAML document) for its standard input; None if ``path`` cannot be read as a
    compose document with that service (compose then reads the file and says what is
    wrong with it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            view = escaped_for(yaml.safe_load(handle), service)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return None if view is None else json.dumps(view, default=str).encode()
