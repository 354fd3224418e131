"""Typed decoding of plain data into the model Structs.

A walker driven by ``msgspec.inspect`` runs first: it warns about unknown keys (with a
did-you-mean), turns numbers written for string fields into their source text, and parses the
Hive value kinds msgspec cannot (durations, ports, sizes, enum values with a good message). Then
``msgspec.convert`` does the type checking; its ValidationError is translated into the dotted key
path and line of the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from ._issues import IssueSink, KeyPath

T = TypeVar("T")

_INVALID: Any = object()  # a value the walker rejected (and reported)

_TYPE_INFO: dict[Any, mi.Type] = {}


def _type_info(tp: Any) -> mi.Type:
    info = _TYPE_INFO.get(tp)
    if info is None:
        info = _TYPE_INFO[tp] = mi.type_info(tp)
    return info


# ---- value kinds -----------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def describe(value: object) -> str:
    """'a string ('x')', 'an integer (3)', 'null', ... for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return describe(value)


def parse_duration(value: object) -> float:
    """``500ms``, ``10s``, ``1.5m``, ``2h``, or a bare number of seconds. Raises ValueError."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is not None:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        raise ValueError(
            f"invalid duration {_shown(value)}: expected a number with ms, s, m or h "
            "(e.g. '500ms', '10s', '1m'); a bare number is seconds"
        )
    return seconds


def parse_port(value: object, *, auto: bool = False) -> int:
    """An int 1-65535, or a string of digits (an interpolated ``${...}`` value); with
    ``auto``, also 0: a port the daemon picks. Raises ValueError."""
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        port = int(value.strip()[:6])
    if port is None or not (0 if auto else 1) <= port <= 65535:
        also = ", or 0 for a free port the daemon picks" if auto else ""
        raise ValueError(f"invalid port {_shown(value)}: expected an integer between 1 and 65535{also}")
    return port


def parse_size(value: object) -> int:
    """Bytes: an int, or ``512KB``/``1MB``/``1MiB`` (K, M, G are powers of 1024). Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is not None:
            unit = (match.group(2) or "b")[0].lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"invalid size {_shown(value)}: expected bytes or a size like '512KB', '1MB'")


_KIND_PARSERS = {"duration": parse_duration, "port": parse_port, "size": parse_size}


def did_you_mean(word: str, choices: Collection[str]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    import difflib  # only for a did-you-mean: not worth loading for every daemon

    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else ""


# ---- msgspec error translation ---------------------------------------------------------------

_AT_RE = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_TOKEN_RE = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\[\.\.\.\]")
_MISSING_RE = re.compile(r"^Object missing required field `([^`]+)`$")
_EXPECTED_RE = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_EXPECTED_CONSTRAINT_RE = re.compile(r"^Expected `([^`]+)` (.+)$")
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _type_words(names: str) -> str:
    parts = [_TYPE_WORDS.get(part.strip(), part.strip()) for part in names.split("|")]
    parts = [part for part in parts if part != "null"] or ["null"]
    return " or ".join(parts)


def translate_validation_error(error: msgspec.ValidationError) -> tuple[KeyPath, str]:
    """msgspec's ``Expected `int`, got `str` - at `$.a[0].b``` -> (("a", 0, "b"), message)."""
    match = _AT_RE.match(str(error))
    assert match is not None  # the pattern matches any text
    message = match.group("message")
    path: list[str | int] = []
    for token in _PATH_TOKEN_RE.finditer(match.group("path") or ""):
        if token.group(0) == "[...]":
            break  # a dict key msgspec does not name: the line of the mapping is the best we have
        path.append(token.group(1) if token.group(1) is not None else int(token.group(2)))
    if missing := _MISSING_RE.match(message):
        path.append(missing.group(1))
        return tuple(path), f"'{missing.group(1)}' is required"
    if expected := _EXPECTED_RE.match(message):
        return tuple(path), (
            f"expected {_type_words(expected.group(1))}, got {_type_words(expected.group(2))}"
        )
    if constrained := _EXPECTED_CONSTRAINT_RE.match(message):
        return tuple(path), f"expected {_type_words(constrained.group(1))} {constrained.group(2)}"
    return tuple(path), message[:1].lower() + message[1:]


# ---- the walker ------------------------------------------------------------------------------


class Decoder:
    """Decodes blocks of one file, reporting into ``sink``."""

    def __init__(self, sink: IssueSink, scalar_text: Mapping[KeyPath, str] | None = None) -> None:
        self.sink = sink
        self.scalar_text: Mapping[KeyPath, str] = scalar_text or {}

    def decode(
        self,
        value: Any,
        tp: type[T],
        path: KeyPath,
        *,
        extra_keys: Collection[str] = (),
        warn_unknown: bool = True,
    ) -> T | None:
        """Returns the typed value, or None after reporting every problem found."""
        decoded = self.decode_with_data(
            value, tp, path, extra_keys=extra_keys, warn_unknown=warn_unknown
        )
        return None if decoded is None else decoded[0]

    def decode_with_data(
        self,
        value: Any,
        tp: type[T],
        path: KeyPath,
        *,
        extra_keys: Collection[str] = (),
        warn_unknown: bool = True,
    ) -> tuple[T, Any] | None:
        """``decode``, and the plain data msgspec typed: the input with unknown keys left
        out and numbers written for string fields as their source text."""
        errors_before = len(self.sink.errors)
        info = _type_info(tp)
        if isinstance(info, mi.StructType):
            normalized = self._struct(value, info, path, extra_keys, warn_unknown)
        else:
            normalized = self.normalize(value, info, path)
        if normalized is _INVALID:
            return None
        try:
            result = msgspec.convert(normalized, tp, strict=True)
        except msgspec.ValidationError as exc:
            relative, message = translate_validation_error(exc)
            found, value = _value_at(normalized, relative)
            expected = _EXPECTED_RE.match(str(exc).split(" - at `")[0])
            if found and expected is not None and "[...]" not in str(exc):
                # Name the offending value, which msgspec leaves out.
                message = f"expected {_type_words(expected.group(1))}, got {describe(value)}"
            self.sink.error((*path, *relative), message)
            return None
        return None if len(self.sink.errors) > errors_before else (result, normalized)

    def scalar_as_text(self, value: Any, path: KeyPath, *, allow_bool: bool) -> Any:
        """A number written where a string is expected becomes its source text (``1.10``)."""
        if isinstance(value, bool):
            return self.scalar_text.get(path, str(value).lower()) if allow_bool else value
        if isinstance(value, int | float):
            return self.scalar_text.get(path, str(value))
        return value

    def normalize(self, value: Any, info: mi.Type, path: KeyPath) -> Any:
        if isinstance(info, mi.Metadata):
            kind = (info.extra or {}).get("hive")
            if kind is None:
                return self.normalize(value, info.type, path)
            try:
                return _KIND_PARSERS[kind](value)
            except ValueError as exc:
                self.sink.error(path, str(exc))
                return _INVALID
        if isinstance(info, mi.StructType):
            return self._struct(value, info, path, (), True)
        if isinstance(info, mi.UnionType):
            member = _union_member(value, info.types)
            if member is None and isinstance(value, int | float) and not isinstance(value, bool):
                member = next((m for m in info.types if isinstance(m, mi.StrType)), None)
            return value if member is None else self.normalize(value, member, path)
        if isinstance(info, mi.ListType) and isinstance(value, list):
            items = [
                self.normalize(item, info.item_type, (*path, i)) for i, item in enumerate(value)
            ]
            return _INVALID if any(item is _INVALID for item in items) else items
        if isinstance(info, mi.DictType) and isinstance(value, dict):
            return self._dict(value, info, path)
        if isinstance(info, mi.LiteralType):
            return self._literal(value, info, path)
        if isinstance(info, mi.StrType):
            return self.scalar_as_text(value, path, allow_bool=False)
        return value

    def _struct(
        self,
        value: Any,
        info: mi.StructType,
        path: KeyPath,
        extra_keys: Collection[str],
        warn_unknown: bool,
    ) -> Any:
        if not isinstance(value, dict):
            return value  # msgspec reports the type
        fields = {field.encode_name: field for field in info.fields}
        result: dict[str, Any] = {}
        invalid = False
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                if warn_unknown and key not in extra_keys:
                    self.warn_unknown_key((*path, key), [*fields, *extra_keys])
                continue
            normalized = self.normalize(item, field.type, (*path, key))
            if normalized is _INVALID:
                # Dropping an optional field lets msgspec report the block's other problems.
                invalid = invalid or field.required
                continue
            result[key] = normalized
        return _INVALID if invalid else result

    def _dict(self, value: dict[str, Any], info: mi.DictType, path: KeyPath) -> Any:
        result: dict[str, Any] = {}
        invalid = False
        string_values = isinstance(info.value_type, mi.StrType)
        for key, item in value.items():
            item_path = (*path, key)
            if string_values:
                # Environment-like maps: `PORT: 8080` and `DEBUG: true` mean their text.
                item = self.scalar_as_text(item, item_path, allow_bool=True)
                if not isinstance(item, str):
                    self.sink.error(item_path, f"expected a string, got {describe(item)}")
                    invalid = True
                    continue
                result[key] = item
                continue
            normalized = self.normalize(item, info.value_type, item_path)
            invalid = invalid or normalized is _INVALID
            result[key] = normalized
        return _INVALID if invalid else result

    def _literal(self, value: Any, info: mi.LiteralType, path: KeyPath) -> Any:
        if value in info.values and type(value) in {type(v) for v in info.values}:
            return value
        choices = [str(choice) for choice in info.values]
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        self.sink.error(
            path, f"invalid value {_shown(value)}: expected one of {', '.join(choices)}{hint}"
        )
        return _INVALID

    def warn_unknown_key(self, path: KeyPath, known: Collection[str]) -> None:
        key = str(path[-1])
        self.sink.warning(path, f"unknown key '{key}'{did_you_mean(key, known)}")

    def warn_unknown_keys(
        self, value: Mapping[str, Any], known: Collection[str], path: KeyPath
    ) -> None:
        for key in value:
            if key not in known:
                self.warn_unknown_key((*path, key), known)


def _value_at(data: Any, path: KeyPath) -> tuple[bool, Any]:
    for key in path:
        in_list = isinstance(key, int) and isinstance(data, list) and 0 <= key < len(data)
        if in_list or (isinstance(key, str) and isinstance(data, dict) and key in data):
            data = data[key]
        else:
            return False, None
    return True, data


def _union_member(value: Any, members: tuple[mi.Type, ...]) -> mi.Type | None:
    for member in members:
        if _accepts(member, value):
            return member
    return None


def _accepts(info: mi.Type, value: Any) -> bool:
    if isinstance(info, mi.Metadata):
        if (info.extra or {}).get("hive") is not None:
            return isinstance(value, str | int | float) and not isinstance(value, bool)
        return _accepts(info.type, value)
    if value is None:
        return isinstance(info, mi.NoneType)
    if isinstance(value, dict):
        return isinstance(info, mi.StructType | mi.DictType | mi.AnyType)
    if isinstance(value, list):
        return isinstance(info, mi.ListType | mi.AnyType)
    if isinstance(value, bool):
        return isinstance(info, mi.BoolType | mi.AnyType)
    if isinstance(value, int):
        return isinstance(info, mi.IntType | mi.FloatType | mi.AnyType)
    if isinstance(value, float):
        return isinstance(info, mi.FloatType | mi.AnyType)
    if isinstance(value, str):
        return isinstance(info, mi.StrType | mi.LiteralType | mi.AnyType)
    return False
