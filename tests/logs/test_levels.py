"""Level guessing, as Hive does it (plus explicit markers Hive's rules miss)."""

from __future__ import annotations

from typing import Any

import pytest

from hive.daemon.logs import guess_level, parse_line

# (line, level) for plain text.
TEXT_CASES = [
    # Hive's default: no marker means info (on stderr too).
    ("GET /api/users 200 12ms", "info"),
    ("", "info"),
    # Hive's bracket markers, anywhere in the line.
    ("[ERROR] database unreachable", "error"),
    ("2024-01-02 10:00:00 [wrn] disk at 91%", "warn"),
    ("[2024-01-02 10:00:00] [debug] cache miss", "debug"),
    ("worker-3 [TRC] enter handler", "trace"),
    ("[INF] listening on :8080", "info"),
    ("[FATAL] cannot continue", "fatal"),  # Hive says error; we have a fatal level
    # Hive: the most severe bracket wins.
    ("[info] retry [error] gave up", "error"),
    # Hive's words at a word boundary.
    ("ERROR: connection refused", "error"),
    ("request failed with error: timeout", "error"),
    ("something fatal happened", "error"),  # Hive maps the bare word to error
    ("Warning: deprecated option", "warn"),
    ("db:warn slow query", "warn"),
    ("debug: payload={}", "debug"),
    ("trace: span opened", "trace"),
    # ... and what they don't catch.
    ("0 errors found", "info"),
    ("errorCount=3", "info"),
    ("noerror: fine", "info"),
    # logfmt and quoted key/values.
    ('time=2024-01-02T10:00:00Z level=warn msg="slow"', "warn"),
    ("ts=1 lvl=ERROR caller=main.go:12", "error"),
    ('at=info severity="critical" msg=x', "fatal"),
    ("Battery level=high and stuff", "info"),
    # glog / klog prefixes.
    ("E0101 12:00:00.123456    1234 main.go:12] failed to sync", "error"),
    ("W0101 12:00:00.123456    1234 main.go:12] retrying", "warn"),
    ("I0101 12:00:00.123456    1234 main.go:12] synced error: none", "info"),
    ("F0101 12:00:00.123456    1234 main.go:12] giving up", "fatal"),
    # A leading level word, after a timestamp or two, wins over later words.
    ("INFO: retry after error: timeout", "info"),
    ("2024-01-02T10:00:00Z WARN disk almost full", "warn"),
    ("2024-01-02 10:00:00,123 DEBUG sql: select 1", "debug"),
    ("notice: config reloaded", "notice"),
    ("panic: runtime error: index out of range", "fatal"),
    ("Err: permission denied", "error"),
    ("Alert: new user signed up", "info"),  # syslog names only count in explicit fields
    # Only the first 100 characters are looked at.
    ("x" * 100 + " ERROR: too far", "info"),
]


@pytest.mark.parametrize(("line", "level"), TEXT_CASES)
def test_text_levels(line: str, level: str) -> None:
    assert guess_level(line) == level
    assert parse_line(line) == (level, line, None)


# (line, level, message, fields) for JSON lines.
JSON_CASES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ('{"level":"error","msg":"db down","retry":3}', "error", "db down", {"retry": 3}),
    ('{"severity":"WARNING","message":"slow","ms":812}', "warn", "slow", {"ms": 812}),
    ('{"lvl":"dbg","msg":"x"}', "debug", "x", None),
    ('{"level":30,"time":1,"msg":"pino info"}', "info", "pino info", {"time": 1}),
    ('{"level":50,"msg":"pino error"}', "error", "pino error", None),
    ('{"level":60,"msg":"pino fatal"}', "fatal", "pino fatal", None),
    ('{"severity":3,"message":"syslog err"}', "error", "syslog err", None),
    ('{"severity":"ALERT","message":"gcp alert"}', "fatal", "gcp alert", None),
    ('{"log.level":"notice","message":"ecs"}', "notice", "ecs", None),
    # No level key: the message text decides; the other keys stay fields.
    ('{"msg":"ERROR: from text","user":"bob"}', "error", "ERROR: from text", {"user": "bob"}),
    # No message key: the line itself is the message.
    ('{"level":"warn","code":7}', "warn", '{"level":"warn","code":7}', {"code": 7}),
    # A non-string message is kept as JSON text.
    ('{"level":"info","msg":{"a":1}}', "info", '{"a":1}', None),
    # Not JSON after all: plain-text rules (the "level": marker still counts).
    ('{"level":"error", broken', "error", '{"level":"error", broken', None),
    ('{not json at all}', "info", "{not json at all}", None),
]


@pytest.mark.parametrize(("line", "level", "message", "fields"), JSON_CASES)
def test_json_levels(line: str, level: str, message: str, fields: dict[str, Any] | None) -> None:
    assert parse_line(line) == (level, message, fields)
