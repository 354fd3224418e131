"""http checks against a real HTTP server child process."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.health.helpers import (
    http_check,
    http_server,
    make_monitor,
    refused_port,
    running,
)

pytestmark = pytest.mark.anyio


async def test_healthy_then_unhealthy_after_exactly_retries_failures_then_healthy(
    tmp_path: Path,
) -> None:
    async with http_server(tmp_path) as server:
        monitor, recorder = make_monitor([http_check(server.port, retries=3)])
        assert monitor.healthy is None
        async with running(monitor):
            change, _ = await recorder.next_change()
            assert change.healthy is True
            assert change.message == f"GET 127.0.0.1:{server.port}/health: HTTP 200 from /health"
            assert monitor.healthy is True

            server.set_mode("503")
            change, seen = await recorder.next_change()
            assert change.healthy is False
            # The failures since the last pass: exactly `retries` of them, and the verdict came
            # with the third.
            failures_in_a_row = 0
            for result in seen:
                failures_in_a_row = 0 if result.healthy else failures_in_a_row + 1
            assert failures_in_a_row == 3
            assert [r.consecutive_failures for r in seen if not r.healthy][-3:] == [1, 2, 3]
            (snapshot,) = change.results
            assert snapshot.consecutive_failures == 3
            assert snapshot.healthy is False
            assert snapshot.message == "HTTP 503 from /health"
            assert change.message == (
                f"GET 127.0.0.1:{server.port}/health: HTTP 503 from /health "
                "(3 consecutive failures)"
            )
            assert monitor.healthy is False

            server.set_mode("200")
            change, _ = await recorder.next_change()
            assert change.healthy is True  # one pass is enough to recover
            assert change.results[0].consecutive_failures == 0
        assert [c.healthy for c in recorder.changes] == [True, False, True]

    result = monitor.results()[0]
    assert result.kind == "http"
    assert result.target == f"GET 127.0.0.1:{server.port}/health"
    assert result.checked_at is not None
    assert str(result.checked_at.utcoffset()) == "0:00:00"
    # The client sent what it should.
    assert server.requests
    assert all(
        line.startswith("GET /health ")
        and f"host=127.0.0.1:{server.port}" in line
        and "connection=close" in line
        for line in server.requests
    )


async def test_first_verdict_waits_for_retries_failures(tmp_path: Path) -> None:
    async with http_server(tmp_path, mode="500") as server:
        monitor, recorder = make_monitor([http_check(server.port, retries=2)])
        async with running(monitor):
            change, seen = await recorder.next_change()
        assert change.healthy is False
        assert [r.consecutive_failures for r in seen] == [1, 2]
        assert change.results[0].message == "HTTP 500 from /health"


@pytest.mark.parametrize(
    ("expected", "served", "passes", "message"),
    [
        (204, "200", False, "HTTP 200 from /health (expected 204)"),
        (204, "204", True, "HTTP 204 from /health"),
        (503, "503", True, "HTTP 503 from /health"),  # an exact status need not be 2xx
        (None, "204", True, "HTTP 204 from /health"),  # any 2xx
        (None, "302", False, "HTTP 302 from /health"),
        (None, "404", False, "HTTP 404 from /health"),
    ],
)
async def test_status(
    tmp_path: Path, expected: int | None, served: str, passes: bool, message: str
) -> None:
    async with http_server(tmp_path, mode=served) as server:
        monitor, recorder = make_monitor([http_check(server.port, status=expected, retries=1)])
        async with running(monitor):
            change, _ = await recorder.next_change()
        assert change.healthy is passes
        assert change.results[0].message == message


async def test_status_mismatch_recovers_when_the_status_matches(tmp_path: Path) -> None:
    async with http_server(tmp_path, mode="200") as server:
        monitor, recorder = make_monitor([http_check(server.port, status=204, retries=1)])
        async with running(monitor):
            change, _ = await recorder.next_change()
            assert (change.healthy, change.results[0].message) == (
                False, "HTTP 200 from /health (expected 204)"
            )
            server.set_mode("204")
            change, _ = await recorder.next_change()
            assert change.healthy is True


@pytest.mark.parametrize("method", ["HEAD", "POST"])
async def test_methods(tmp_path: Path, method: str) -> None:
    async with http_server(tmp_path) as server:
        monitor, recorder = make_monitor(
            [http_check(server.port, method=method, path="/ready")]  # type: ignore[arg-type]
        )
        async with running(monitor):
            change, _ = await recorder.next_change()
        assert change.healthy is True
        assert monitor.results()[0].target == f"{method} 127.0.0.1:{server.port}/ready"
    line = server.requests[0]
    assert line.startswith(f"{method} /ready 200 ")
    # POST announces its empty body; GET and HEAD send none.
    assert ("length=0" in line) == (method == "POST")


async def test_path_is_normalised_and_quoted(tmp_path: Path) -> None:
    async with http_server(tmp_path) as server:
        monitor, recorder = make_monitor([http_check(server.port, path="status page?x=1")])
        async with running(monitor):
            change, _ = await recorder.next_change()
        assert change.healthy is True
    assert server.requests[0].startswith("GET /status%20page?x=1 200 ")
    assert monitor.results()[0].message == "HTTP 200 from /status%20page?x=1"


async def test_server_gone_is_connection_refused(tmp_path: Path) -> None:
    async with http_server(tmp_path) as server:
        monitor, recorder = make_monitor([http_check(server.port, retries=2)])
        async with running(monitor):
            change, _ = await recorder.next_change()
            assert change.healthy is True
            await server.stop()
            change, seen = await recorder.next_change()
        assert change.healthy is False
        assert seen[-1].message == f"connection refused on 127.0.0.1:{server.port}"
        assert change.results[0].consecutive_failures == 2


async def test_nothing_listening() -> None:
    with refused_port() as port:
        monitor, recorder = make_monitor([http_check(port, retries=1)])
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is False
    assert change.results[0].message == f"connection refused on 127.0.0.1:{port}"
    assert change.results[0].target == f"GET 127.0.0.1:{port}/health"


async def test_slow_server_times_out(tmp_path: Path) -> None:
    async with http_server(tmp_path, mode="hang") as server:
        monitor, recorder = make_monitor([http_check(server.port, timeout=0.3, retries=1)])
        async with running(monitor):
            with anyio.fail_after(10):  # the check is bounded by its timeout, not the server
                change, _ = await recorder.next_change()
    assert change.healthy is False
    assert change.results[0].message == "timed out after 300ms"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("close", "connection closed without an HTTP response"),
        ("garbage", "invalid HTTP response: b'hello'"),
    ],
)
async def test_broken_answers(tmp_path: Path, mode: str, message: str) -> None:
    async with http_server(tmp_path, mode=mode) as server:
        monitor, recorder = make_monitor([http_check(server.port, retries=1)])
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is False
    assert change.results[0].message == message


async def test_interim_1xx_answer_is_skipped(tmp_path: Path) -> None:
    async with http_server(tmp_path, mode="early") as server:
        monitor, recorder = make_monitor([http_check(server.port, retries=1)])
        async with running(monitor):
            change, _ = await recorder.next_change()
    assert change.healthy is True
    assert change.results[0].message == "HTTP 200 from /health"
