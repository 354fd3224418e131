"""YAML text -> plain Python data plus a key-path -> line table.

We compose with PyYAML (node tree, so every key keeps its line) and resolve plain scalars with the
YAML 1.2 core schema the format asks for: ``yes``/``on`` stay strings, ``1:30`` is not a number and
dates stay strings.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml

from ._issues import ConfigError, ConfigIssue, KeyPath

MAX_DEPTH = 64
# Bounds alias expansion ("billion laughs"): a real hive.yaml has a few thousand nodes.
MAX_NODES = 200_000

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_TAG = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = _TAG + "str", _TAG + "seq", _TAG + "map"
# YAML 1.2 core schema for plain scalars (one regex, tried only on plain scalars).
_PLAIN_SCALAR = re.compile(
    r"(?P<null>~|null|Null|NULL|)"
    r"|(?P<bool>true|True|TRUE|false|False|FALSE)"
    r"|(?P<int>[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)"
    r"|(?P<float>[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))"
    r"|(?P<merge><<)"
)


_NON_STRING_START = frozenset("~nNtTfF-+.0123456789<")


class _Yaml12Loader(_BaseLoader):  # type: ignore[misc]
    """PyYAML's loader with YAML 1.2 core-schema resolution (and a faster resolver)."""

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass  # no path resolvers: skip PyYAML's bookkeeping

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            # Most scalars are words: only these first characters can start a non-string.
            if implicit[0] and (not value or value[0] in _NON_STRING_START):
                match = _PLAIN_SCALAR.fullmatch(value)
                if match is not None and match.lastgroup is not None:
                    return _TAG + match.lastgroup
            return _STR
        return _SEQ if kind is yaml.SequenceNode else _MAP


class Document(msgspec.Struct):
    data: Any
    # Line (1-based) of each mapping key and list item, by key path.
    lines: dict[KeyPath, int]
    # Source text of non-string scalars, so `VERSION: 1.10` can become the string "1.10".
    scalar_text: dict[KeyPath, str]


class _YamlValueError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _fail(file: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([ConfigIssue("error", file, line, "", message)])


def parse_yaml(text: str, file: str) -> Document:
    try:
        root = yaml.compose(text, Loader=_Yaml12Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            raise _fail(file, None, f"invalid YAML: {problem}") from None
        if exc.context == "expected a single document in the stream":
            raise _fail(
                file, mark.line + 1, "invalid YAML: a second document starts here; use one document"
            ) from None
        where = f"column {mark.column + 1}"
        context_mark = exc.context_mark
        if exc.context and context_mark is not None and context_mark.line != mark.line:
            where += f"; {exc.context} that starts on line {context_mark.line + 1}"
        raise _fail(file, mark.line + 1, f"invalid YAML: {problem} ({where})") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise _fail(
            file, line, f"invalid YAML: {exc.reason} (character {exc.character!r})"
        ) from None
    except yaml.YAMLError as exc:
        raise _fail(file, None, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _fail(file, None, f"invalid YAML: nesting deeper than {MAX_DEPTH} levels") from None
    if root is None:
        raise _fail(file, 1, "file is empty: expected a mapping with 'version' and 'services'")
    converter = _Converter()
    converter.lines[()] = root.start_mark.line + 1
    try:
        data = converter.convert(root, (), 0)
    except _YamlValueError as exc:
        raise _fail(file, exc.line, exc.message) from None
    return Document(data=data, lines=converter.lines, scalar_text=converter.scalar_text)


class _Converter:
    def __init__(self) -> None:
        self.lines: dict[KeyPath, int] = {}
        self.scalar_text: dict[KeyPath, str] = {}
        self.node_count = 0

    def convert(self, node: Any, path: KeyPath, depth: int) -> Any:
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise _YamlValueError(line, f"invalid YAML: nesting deeper than {MAX_DEPTH} levels")
        self.node_count += 1
        if self.node_count > MAX_NODES:
            raise _YamlValueError(
                line, f"document too large: more than {MAX_NODES} values (alias expansion?)"
            )
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, line)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                raise _YamlValueError(line, f"unsupported YAML tag {node.tag!r}")
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.convert(item, (*path, index), depth + 1))
            return items
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                raise _YamlValueError(line, f"unsupported YAML tag {node.tag!r}")
            return self._mapping(node, path, depth)
        raise _YamlValueError(line, "unsupported YAML node")  # pragma: no cover

    def _mapping(self, node: Any, path: KeyPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: list[Any] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _TAG + "merge":
                merged.extend(self._merge_sources(value_node))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _YamlValueError(key_line, "mapping keys must be plain strings")
            if key_node.tag == _TAG + "null" and key_node.value in ("", "~"):
                raise _YamlValueError(key_line, "mapping key is missing (null key)")
            key = str(key_node.value)
            if key in first_line:
                raise _YamlValueError(
                    key_line, f"duplicate key '{key}' (first defined on line {first_line[key]})"
                )
            first_line[key] = key_line
            self.lines[(*path, key)] = key_line
            result[key] = self.convert(value_node, (*path, key), depth + 1)
        # `<<: *anchor` (YAML 1.1 merge keys): explicit keys win, then the first merged mapping.
        for source in merged:
            for key_node, value_node in source.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _TAG + "merge":
                    continue
                key = str(key_node.value)
                if key not in result:
                    self.lines[(*path, key)] = key_node.start_mark.line + 1
                    result[key] = self.convert(value_node, (*path, key), depth + 1)
        return result

    @staticmethod
    def _merge_sources(node: Any) -> list[Any]:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return [node]
        if isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.MappingNode) for item in node.value
        ):
            return list(node.value)
        raise _YamlValueError(line, "'<<' (merge key) needs a mapping or a list of mappings")

    def _scalar(self, node: Any, path: KeyPath, line: int) -> Any:
        tag: str = node.tag
        value: str = node.value
        if tag == _TAG + "str":
            return value
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            if value.lower() not in ("true", "false"):
                raise _YamlValueError(line, f"invalid boolean {value!r}")
            self.scalar_text[path] = value
            return value.lower() == "true"
        if tag == _TAG + "int":
            self.scalar_text[path] = value
            return _parse_int(value, line)
        if tag == _TAG + "float":
            self.scalar_text[path] = value
            return _parse_float(value, line)
        raise _YamlValueError(line, f"unsupported YAML tag {tag!r}")


def _parse_int(text: str, line: int) -> int:
    try:
        cleaned = text.replace("_", "")
        if cleaned.startswith(("0o", "0x")):
            return int(cleaned, 0)
        return int(cleaned, 10)
    except ValueError:
        raise _YamlValueError(line, f"invalid integer {text[:40]!r}") from None


def _parse_float(text: str, line: int) -> float:
    lowered = text.lower()
    if lowered in (".inf", "+.inf", "-.inf", ".nan"):
        return float(lowered.replace(".", ""))
    try:
        return float(text)
    except ValueError:
        raise _YamlValueError(line, f"invalid number {text[:40]!r}") from None
