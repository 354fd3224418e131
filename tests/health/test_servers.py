"""postgres, mysql (MariaDB), redis and grpc checks against real servers the test starts: each
comes up healthy (probed from the moment its process starts), and each pointed at a dead port
goes unhealthy within its retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from hive.config import GrpcCheck, HealthCheckSpec, MysqlCheck, PostgresCheck, RedisCheck
from tests.health.helpers import Change, Recorder, make_monitor, refused_port, running
from tests.health.servers import (
    DataDir,
    RunAs,
    grpc_argv,
    mariadb_argv,
    mariadb_datadir,
    postgres_argv,
    postgres_cluster,
    redis_argv,
    server_process,
)
from tests.support import free_port

pytestmark = pytest.mark.anyio

BLOCKS: dict[str, type[msgspec.Struct]] = {
    "postgres": PostgresCheck, "mysql": MysqlCheck, "redis": RedisCheck, "grpc": GrpcCheck,
}
# A server's start (MariaDB's most of all) on a loaded machine: the deadline of a broken probe.
START_DEADLINE = 120.0


def server_check(kind: str, port: int, *, retries: int = 3, start_period: float = 0.0,
                 interval: float = 0.1, **fields: Any) -> HealthCheckSpec:
    block = msgspec.convert({"port": str(port), "interval": interval, "retries": retries,
                             "start_period": start_period, **fields}, BLOCKS[kind])
    return HealthCheckSpec(type=kind, config=msgspec.to_builtins(block), interval=interval,
                           timeout=5.0, retries=retries, start_period=start_period,
                           **{kind: block})


async def first_verdict(recorder: Recorder, deadline: float = START_DEADLINE) -> Change:
    with anyio.fail_after(deadline):
        async for event in recorder._receive:
            if isinstance(event, Change):
                return event
    raise AssertionError("the recorder closed")


async def comes_up_healthy(argv: list[str], run_as: RunAs, log: Path, check: HealthCheckSpec) -> Change:
    """Start the server and the monitor together; the start period covers the server's start."""
    monitor, recorder = make_monitor([check])
    async with server_process(argv, run_as, log), running(monitor):
        return await first_verdict(recorder)


async def goes_unhealthy(check_of_port: Any) -> tuple[Change, int]:
    with refused_port() as port:
        monitor, recorder = make_monitor([check_of_port(port)])
        async with running(monitor):
            change = await first_verdict(recorder, 15.0)
    return change, port


# ---- a dead port, for each kind --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "retries"), [("redis", 2), ("postgres", 3), ("mysql", 2), ("grpc", 2)])
async def test_a_dead_port_goes_unhealthy_after_its_retries(kind: str, retries: int) -> None:
    change, port = await goes_unhealthy(lambda port: server_check(kind, port, retries=retries))
    assert change.healthy is False
    assert change.results[0].consecutive_failures == retries
    assert change.results[0].message == f"connection refused on 127.0.0.1:{port}"


# ---- redis ---------------------------------------------------------------------------------


async def test_redis_comes_up_healthy(tmp_path: Path) -> None:
    port = free_port()
    change = await comes_up_healthy(redis_argv(port, tmp_path), RunAs(), tmp_path / "log",
                                    server_check("redis", port, start_period=START_DEADLINE))
    assert change.healthy is True, change.message
    result = change.results[0]
    assert (result.kind, result.target) == ("redis", f"redis 127.0.0.1:{port}")
    assert result.message == f"Redis answered PONG on 127.0.0.1:{port}"


async def test_redis_with_a_password_and_a_db(tmp_path: Path) -> None:
    port = free_port()
    argv = redis_argv(port, tmp_path, "--requirepass", "s3cret")
    right = server_check("redis", port, start_period=START_DEADLINE, password="s3cret", db=2)
    change = await comes_up_healthy(argv, RunAs(), tmp_path / "log", right)
    assert change.healthy is True, change.message
    # Without the password the server is there but refuses: the check says what to set.
    wrong = server_check("redis", port, start_period=START_DEADLINE, retries=1)
    monitor, recorder = make_monitor([wrong])
    async with server_process(argv, RunAs(), tmp_path / "log2"), running(monitor):
        # Failures during the start period do not count; wait for the refusal itself.
        result = await recorder.wait_results(lambda r: "NOAUTH" in r.message)
    assert result[0].message.startswith("Redis answered PING with: NOAUTH")
    assert result[0].message.endswith("(set the check's password)")


# ---- postgresql ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[DataDir]:
    with postgres_cluster() as made:
        yield made


async def test_postgres_comes_up_healthy(cluster: DataDir) -> None:
    port = free_port()
    change = await comes_up_healthy(postgres_argv(cluster, port), cluster.run_as, cluster.path / "log",
                                    server_check("postgres", port, start_period=START_DEADLINE))
    assert change.healthy is True, change.message
    assert change.results[0].target == f"postgres 127.0.0.1:{port}"
    assert change.results[0].message == (
        f"PostgreSQL accepting connections on 127.0.0.1:{port} (no password needed)")


async def test_postgres_asking_for_a_password_is_up(cluster: DataDir) -> None:
    """As pg_isready: a server that asks who connects accepts connections; no password needed."""
    hba = cluster.path / "password_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    hba.chmod(0o644)
    port = free_port()
    argv = [*postgres_argv(cluster, port), "-c", f"hba_file={hba}"]
    change = await comes_up_healthy(argv, cluster.run_as, cluster.path / "log",
                                    server_check("postgres", port, start_period=START_DEADLINE))
    assert change.healthy is True, change.message
    assert change.results[0].message == f"PostgreSQL accepting connections on 127.0.0.1:{port} (SASL)"


# ---- mariadb -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb() -> Iterator[DataDir]:
    with mariadb_datadir() as made:
        yield made


async def test_mysql_check_of_mariadb_comes_up_healthy(mariadb: DataDir) -> None:
    port = free_port()
    change = await comes_up_healthy(mariadb_argv(mariadb, port), mariadb.run_as,
                                    mariadb.path / "log",
                                    server_check("mysql", port, start_period=START_DEADLINE))
    assert change.healthy is True, change.message
    message = change.results[0].message
    assert message.startswith("MySQL server ") and "MariaDB" in message
    assert message.endswith(f"greeted on 127.0.0.1:{port}")


# ---- grpc ----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "hive.Up"])
async def test_grpc_comes_up_healthy(tmp_path: Path, service: str) -> None:
    port = free_port()
    change = await comes_up_healthy(grpc_argv(port), RunAs(), tmp_path / "log",
                                    server_check("grpc", port, start_period=START_DEADLINE,
                                                 service=service))
    assert change.healthy is True, change.message
    what = f"service '{service}'" if service else "the server"
    assert change.results[0].message == f"gRPC health of {what}: SERVING"


@pytest.mark.parametrize(("service", "message"), [
    ("hive.Down", "gRPC health of service 'hive.Down': NOT_SERVING"),
    ("hive.Nope", "gRPC health check failed: NOT_FOUND: the server has no health status for "
                  "service 'hive.Nope'"),
])
async def test_grpc_service_not_serving(tmp_path: Path, service: str, message: str) -> None:
    port = free_port()
    check = server_check("grpc", port, start_period=START_DEADLINE, service=service)
    monitor, recorder = make_monitor([check])
    async with server_process(grpc_argv(port), RunAs(), tmp_path / "log"), running(monitor):
        # Refused while the server starts, then the server's own answer.
        found = await recorder.wait_results(lambda r: "connection refused" not in r.message)
    assert found[0].message == message
