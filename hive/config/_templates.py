"""Parse-time ``${plugin.key[:-default]}`` interpolation and runtime ``{{...}}`` templates (§12)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping

from ._issues import RuntimeTemplateError

# One left-to-right pass; `$${` is an escape for a literal `${` and is consumed first.
_PARSE_TIME = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\.([^}:]+)(?::-([^}]*))?\}")

# `{{{X}}}` -> literal `{{X}}` (spec S); a lone `{{{` -> `{{`.
_RUNTIME = re.compile(
    r"\{\{\{([^{}]*)\}\}\}"
    r"|\{\{\{"
    r"|\{\{runtime\.port\.([A-Za-z_][A-Za-z0-9_]*)\}\}"
    r"|\{\{uses\.([A-Za-z_][A-Za-z0-9_]*)\.port\.([A-Za-z_][A-Za-z0-9_]*)\}\}"
)
# Looks like a runtime template but does not follow the grammar, so it would stay verbatim.
_RUNTIME_LOOKALIKE = re.compile(r"(?<!\{)\{\{\s*(?:runtime|uses)\b[^{}]*\}\}")

# Resolves (plugin, key) -> value, or None when the plugin has no value.
Resolver = Callable[[str, str], str | None]


def interpolate(text: str, resolve: Resolver) -> tuple[str, list[tuple[str, str]]]:
    """Returns the interpolated text and the unresolved references as (reference, plugin)."""
    if "$" not in text:
        return text, []
    unresolved: list[tuple[str, str]] = []

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        plugin, key, default = match.group(1), match.group(2), match.group(3)
        value = resolve(plugin, key)
        if value is not None:
            return value
        if default is not None:
            return default
        unresolved.append((f"${{{plugin}.{key}}}", plugin))
        return whole

    return _PARSE_TIME.sub(replace, text), unresolved


def render_runtime(
    text: str,
    *,
    ports: Mapping[str, int],
    uses: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """Resolves ``{{runtime.port.NAME}}`` and ``{{uses.ALIAS.port.NAME}}``; ``{{{X}}}`` gives the
    literal ``{{X}}``. Raises RuntimeTemplateError with the reference's messages."""
    if "{{" not in text:
        return text
    used = uses or {}

    def replace(match: re.Match[str]) -> str:
        escaped, port_name, alias, uses_port = match.groups()
        if escaped is not None:
            return "{{" + escaped + "}}"
        if port_name is not None:
            if port_name not in ports:
                raise RuntimeTemplateError(f"Unresolved runtime port: {match.group(0)}")
            return str(ports[port_name])
        if alias is not None:
            if alias not in used:
                raise RuntimeTemplateError(f"Unknown uses alias: {alias} in {match.group(0)}")
            if uses_port not in used[alias]:
                raise RuntimeTemplateError(f"Unresolved uses port: {match.group(0)}")
            return str(used[alias][uses_port])
        return "{{"

    return _RUNTIME.sub(replace, text)


def check_runtime_templates(
    text: str, *, port_names: Collection[str] | None, aliases: Collection[str]
) -> tuple[list[str], list[str]]:
    """Validation of templates in a config string: (errors, warnings). ``port_names`` None means
    the ports are unknown (an invalid rollout), so port references are not checked."""
    if "{{" not in text:
        return [], []
    errors: list[str] = []
    for match in _RUNTIME.finditer(text):
        _escaped, port_name, alias, _uses_port = match.groups()
        if port_name is not None and port_names is not None and port_name not in port_names:
            errors.append(
                f"Unresolved runtime port: {match.group(0)}" + _port_hint(port_name, port_names)
            )
        elif alias is not None and alias not in aliases:
            known = f" (uses aliases: {', '.join(sorted(aliases))})" if aliases else ""
            errors.append(f"Unknown uses alias: {alias} in {match.group(0)}{known}")
    warnings = [
        f"'{found.group(0)}' is not a runtime template ({{{{runtime.port.NAME}}}} or "
        "{{uses.ALIAS.port.NAME}}) and is kept as written"
        for found in _RUNTIME_LOOKALIKE.finditer(text)
        if not _RUNTIME.fullmatch(found.group(0))
    ]
    return errors, warnings


def _port_hint(name: str, port_names: Collection[str]) -> str:
    if not port_names:
        return " (the service has no rollout ports)"
    import difflib  # only for a did-you-mean: not worth loading for every daemon

    close = difflib.get_close_matches(name, list(port_names), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f" (ports: {', '.join(port_names)}{hint})"


def is_exact_port_reference(text: str) -> str | None:
    """The NAME of a string that is exactly ``{{runtime.port.NAME}}``, else None."""
    match = _RUNTIME.fullmatch(text)
    if match is None or match.group(2) is None:
        return None
    return match.group(2)


class DotenvSyntaxError(ValueError):
    """A line python-dotenv cannot read (``line`` is 1-based)."""

    def __init__(self, line: int, text: str) -> None:
        super().__init__(f"line {line}: cannot read {text.strip()[:60]!r} (expected KEY=value)")
        self.line = line


def parse_dotenv(text: str) -> dict[str, str]:
    """Dotenv text read by python-dotenv's rules: ``export`` prefixes, single and double
    quotes (escapes in double quotes), multi-line quoted values, ``#`` comments after a
    space, ``${VAR}`` / ``${VAR:-default}`` expanded from earlier lines and the environment.
    A line with a key and no ``=`` sets nothing; a line it cannot read is a
    :class:`DotenvSyntaxError` (python-dotenv would only log it, and drop the line)."""
    import io

    # Only when a .env file is read.
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise DotenvSyntaxError(binding.original.line, binding.original.string)
    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}
