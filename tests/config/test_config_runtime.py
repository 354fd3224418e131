"""Runtime templates: `{{runtime.port.NAME}}`, `{{uses.ALIAS.port.NAME}}`, `{{{` escapes."""

from __future__ import annotations

import pytest

from hive.config import RuntimeTemplateError, render_runtime

PORTS = {"http": 8080, "admin": 9000}
USES = {"db": {"pg": 5432}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("serve --port {{runtime.port.http}}", "serve --port 8080"),
        ("{{runtime.port.http}}:{{runtime.port.admin}}", "8080:9000"),
        ("postgres://localhost:{{uses.db.port.pg}}/app", "postgres://localhost:5432/app"),
        ("{{{runtime.port.http}}}", "{{runtime.port.http}}"),  # spec S escape
        ("{{{anything}}}", "{{anything}}"),
        ("{{{", "{{"),
        ("{{{x", "{{x"),
        ("{{ .Values.port }}", "{{ .Values.port }}"),  # not ours: kept
        ("{{runtime.port.my-port}}", "{{runtime.port.my-port}}"),  # not the grammar: kept
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert render_runtime(text, ports=PORTS, uses=USES) == expected


@pytest.mark.parametrize(
    ("text", "uses", "message"),
    [
        ("{{runtime.port.grpc}}", USES, "Unresolved runtime port: {{runtime.port.grpc}}"),
        ("{{uses.cache.port.x}}", USES, "Unknown uses alias: cache in {{uses.cache.port.x}}"),
        ("{{uses.db.port.x}}", USES, "Unresolved uses port: {{uses.db.port.x}}"),
        ("{{uses.db.port.pg}}", None, "Unknown uses alias: db in {{uses.db.port.pg}}"),
    ],
)
def test_render_errors(text: str, uses: dict[str, dict[str, int]] | None, message: str) -> None:
    with pytest.raises(RuntimeTemplateError) as caught:
        render_runtime(text, ports=PORTS, uses=uses)
    assert str(caught.value) == message
