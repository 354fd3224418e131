"""Turn one line of a service's output into (level, message, fields).

The level rules follow Hive (adi-family/cli, ``ProcessManager::detect_log_level`` in
``crates/hive/core/src/service_manager/process.rs``): bracketed markers anywhere
(``[ERROR]``, ``[wrn]``, …) first, then level words at a word boundary (``error:``,
``warn ``, ``fatal``, …), else info — for stdout and stderr alike. On top of that,
explicit markers Hive's rules miss, in this order: JSON lines, glog/klog prefixes
(``E0101 12:00:00.000``) and ``level=``/``lvl=``/``severity=`` before Hive's
brackets, and a leading level word (``INFO: retry after error: x``) before Hive's
words. Only the first ``WINDOW`` characters are looked at; this runs per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import msgspec

from hive_client import LogLevel, LogLine

__all__ = [
    "WINDOW",
    "format_timestamp",
    "guess_level",
    "parse_file_line",
    "parse_file_lines",
    "parse_line",
]

WINDOW = 100

_T, _D, _I, _N, _W, _E, _F = (
    LogLevel.TRACE.value,
    LogLevel.DEBUG.value,
    LogLevel.INFO.value,
    LogLevel.NOTICE.value,
    LogLevel.WARN.value,
    LogLevel.ERROR.value,
    LogLevel.FATAL.value,
)

# Level names a marker may use: LogLevel.parse's names and aliases, plus a few that
# syslog, GCP and java.util.logging use.
_EXTRA = {
    "emerg": _F,
    "emergency": _F,
    "alert": _F,
    "severe": _E,
    "information": _I,
    "informational": _I,
}
_CANDIDATES = (
    "trace", "trc", "debug", "dbg", "info", "inf", "notice", "warn", "warning", "wrn",
    "error", "err", "fatal", "critical", "crit", "panic",
)  # fmt: skip


def _resolve(name: str) -> str | None:
    """A level name from an explicit field (JSON, key=value): aliases and extras."""
    try:
        return LogLevel.parse(name).value
    except ValueError:
        return _EXTRA.get(name)


# Markers in free text use only LogLevel's own names: "Alert: new user" is not fatal.
_TOKENS: dict[str, str] = {}
for _name in _CANDIDATES:
    _resolved = _resolve(_name)
    if _resolved is not None:
        _TOKENS[_name] = _resolved

# Hive's precedence among markers found anywhere in the line: error beats warn beats
# debug beats trace beats info (notice, which Hive lacks, sits after warn).
_PRIORITY = {_F: 7, _E: 6, _W: 5, _N: 4, _D: 3, _T: 2, _I: 1}

_TOKEN_ALT = "|".join(sorted(_TOKENS, key=len, reverse=True))

# glog / klog: "E0101 12:00:00.000000  1234 file.go:12] msg".
_GLOG = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d")
_GLOG_LEVEL = {"I": _I, "W": _W, "E": _E, "F": _F}
_GLOG_START = frozenset(_GLOG_LEVEL)

# A level word opening the line, after up to two timestamp-ish words (starting with a
# digit): "WARN: x", "[error] x", "2024-01-02T10:00:00Z INFO x", "12:00:01 DEBUG x".
_LEADING = re.compile(rf"\[?({_TOKEN_ALT})(?:\]|:|\s|$)")
_LEADING_START = frozenset("[" + "".join(name[0] for name in _TOKENS))

# Markers that may sit anywhere in the window. Each regex runs only when a cheap
# substring test says it could match, and the "boundary before" test is done by
# hand, so re can use its first-character prefilter.
#   logfmt level=error / lvl=warn / severity=info, or "level":"error" in a cut JSON line
_KV = re.compile(r"(?:log_?level|level|lvl|severity)\"?\s*[=:]\s*[\"']?([a-z]+)")
#   Hive's bracket markers: [err] [error] [fatal] [wrn] [warn] [warning] [dbg] ...
_BRACKET = re.compile(rf"\[({_TOKEN_ALT})\]")
# Hive's words, in its order of precedence, each after start, ' ', ':' or ']':
# "error:", "error ", "fatal" (error); "warn:", "warn ", "warning"; "debug:", "debug ";
# "trace:", "trace ". str.find is several times faster than one regex here.
_WORD_RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("error", (":", " "), _E),
    ("fatal", ("",), _E),  # Hive maps a bare "fatal" word to error
    ("warn", (":", " ", "ing"), _W),
    ("debug", (":", " "), _D),
    ("trace", (":", " "), _T),
)
_WORD_BOUNDARY = frozenset(" :]")
_KV_BOUNDARY_BAD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.")


_JSON_LEVEL_KEYS = ("level", "lvl", "severity", "log.level", "levelname", "Level", "Severity")
_JSON_MESSAGE_KEYS = ("msg", "message", "Message", "@m")
_json_decode = msgspec.json.Decoder().decode


def _word_level(lower: str) -> str | None:
    for word, followers, level in _WORD_RULES:
        at = lower.find(word)
        while at >= 0:
            if at == 0 or lower[at - 1] in _WORD_BOUNDARY:
                after = at + len(word)
                for follower in followers:
                    if lower.startswith(follower, after):
                        return level
            at = lower.find(word, at + 1)
    return None


def _leading_level(lower: str) -> str | None:
    pos = 0
    for _ in range(2):
        if not lower[pos : pos + 1].isdigit():
            break
        space = lower.find(" ", pos)
        if space < 0:
            return None
        pos = space + 1
        while lower.startswith(" ", pos):
            pos += 1
    match = _LEADING.match(lower, pos)
    return None if match is None else _TOKENS[match.group(1)]


def _numeric_level(value: float) -> str | None:
    """syslog severities 0-7, or pino/bunyan's 10-60."""
    if 0 <= value <= 7:
        return (_F, _F, _F, _E, _W, _N, _I, _D)[int(value)]
    if value < 10:
        return None
    for limit, level in ((10, _T), (20, _D), (30, _I), (40, _W), (50, _E)):
        if value <= limit:
            return level
    return _F


def guess_level(text: str) -> str:
    """The level of a plain-text line (a LogLevel value)."""
    window = text[:WINDOW]
    if window[:1] in _GLOG_START:
        glog = _GLOG.match(window)
        if glog is not None:
            return _GLOG_LEVEL[glog.group(1)]
    lower = window.lower()
    if "lev" in lower or "lvl" in lower or "severity" in lower:
        for match in _KV.finditer(lower):
            start = match.start()
            if start and lower[start - 1] in _KV_BOUNDARY_BAD:
                continue
            level = _resolve(match.group(1))
            if level is not None:
                return level  # an explicit key=value is the strongest hint in the text
    if "[" in lower:
        best: str | None = None
        for found in _BRACKET.findall(lower):
            level = _TOKENS[found]
            if best is None or _PRIORITY[level] > _PRIORITY[best]:
                best = level
        if best is not None:
            return best
    # A leading level word ("INFO: retry after error: x") outranks Hive's loose words.
    first = lower[:1]
    if first in _LEADING_START or first.isdigit():
        leading = _leading_level(lower)
        if leading is not None:
            return leading
    if (
        "error" in lower
        or "fatal" in lower
        or "warn" in lower
        or "debug" in lower
        or "trace" in lower
    ):
        return _word_level(lower) or _I
    return _I


def _parse_json(text: str) -> tuple[str, str, dict[str, Any] | None] | None:
    try:
        obj = _json_decode(text)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict) or not obj:
        return None
    level: str | None = None
    for key in _JSON_LEVEL_KEYS:
        if key in obj:
            value = obj.pop(key)
            if isinstance(value, str):
                level = _resolve(value.strip().lower())
            elif isinstance(value, int | float) and not isinstance(value, bool):
                level = _numeric_level(value)
            break
    message: str | None = None
    for key in _JSON_MESSAGE_KEYS:
        if key in obj:
            value = obj.pop(key)
            message = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            break
    if message is None:
        message = text
    if level is None:
        level = guess_level(message)
    return level, message, obj or None


def parse_line(text: str) -> tuple[str, str, dict[str, Any] | None]:
    """(level, message, fields) of one decoded line; fields only for JSON objects."""
    if text[:1] == "{" and text[-1:] == "}":
        parsed = _parse_json(text)
        if parsed is not None:
            return parsed
    return guess_level(text), text, None


# --- The on-disk format: "2026-11-22T10:00:00.123456Z stdout info message" -------------

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_FILE_LINE = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z) (stdout|stderr|hive) ([a-z]+) ?"
)
_LEVELS = frozenset(level.value for level in LogLevel)


# The last second formatted: lines come in bursts within one second, and strftime costs
# four times what the rest of a line's prefix does. One tuple, so a reader in another
# thread never sees a key with another second's text.
_last_second: tuple[tuple[object, ...], str] = ((), "")


def format_timestamp(ts: datetime) -> str:
    """``ts`` as ``_TS_FORMAT`` gives it (UTC datetimes: the "Z" is literal)."""
    global _last_second
    key = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year, ts.tzinfo)
    cached_key, prefix = _last_second
    if key != cached_key:
        prefix = ts.strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (key, prefix)
    return f"{prefix}{ts.microsecond:06d}Z"


def parse_file_line(raw: bytes) -> tuple[datetime, str, str, bytes] | None:
    """(timestamp, stream, level, rest) of a line of a log file, or None."""
    match = _FILE_LINE.match(raw)
    if match is None:
        return None
    level = match.group(3).decode()
    if level not in _LEVELS:
        return None
    try:
        ts = datetime.fromisoformat(match.group(1).decode())
    except ValueError:
        return None
    return ts, match.group(2).decode(), level, raw[match.end() :]


def parse_file_lines(raws: Iterable[bytes], fqn: str) -> Iterator[LogLine]:
    """LogLines back from lines of ``fqn``'s log file. A line without the file's prefix
    (written by hand, or cut) takes the time of the line before it; before any, it is
    skipped (it cannot be placed in time)."""
    last_ts: datetime | None = None
    for raw in raws:
        parsed = parse_file_line(raw)
        if parsed is None:
            if last_ts is None:
                continue
            ts, stream, level, rest = last_ts, "stdout", None, raw
        else:
            ts, stream, level, rest = parsed
        text = rest.decode("utf-8", "replace")
        guessed, message, fields = parse_line(text) if text[:1] == "{" else (None, text, None)
        yield LogLine(
            timestamp=ts,
            level=level or guessed or _I,
            service_fqn=fqn,
            message=message,
            fields=fields,
            stream=stream,
        )
        last_ts = ts
