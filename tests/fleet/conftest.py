"""Fleet fixtures: the harness (tests/fleet/harness.py) started and removed around each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fleet.harness import ETCD, EtcdCluster, Fleet

__all__ = ["EtcdCluster", "Fleet"]


@pytest.fixture
def etcd_cluster() -> Iterator[Callable[..., EtcdCluster]]:
    """``etcd_cluster(size, tls=None, host="127.0.0.1")`` -> a started cluster, removed after the test."""
    if ETCD is None:
        pytest.fail("etcd is not installed: run scripts/ci-etcd.sh")
    started: list[EtcdCluster] = []

    def start(size: int, tls: Path | None = None, host: str = "127.0.0.1") -> EtcdCluster:
        return EtcdCluster.launch(size, started, tls, host)

    yield start
    for cluster in started:
        cluster.remove()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    state = Fleet.create()
    yield state
    state.close()
