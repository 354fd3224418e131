"""Random rounds of link cuts (healed before and after the lease ends) and machine deaths
over hives in network namespaces (tests/fleet/chaos.py): no instance ever runs twice,
and every wanted instance runs again after each round. The seed is printed; set
``FLEET_CHAOS_SEED`` to replay one, ``FLEET_CHAOS_HIVES`` and ``FLEET_CHAOS_ROUNDS`` for more."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import pytest

from tests.fleet.chaos import run_chaos
from tests.fleet.conftest import EtcdCluster, Fleet
from tests.fleet.netns import Network, usable


@pytest.fixture
def network() -> Iterator[Network]:
    why = usable()
    if why:
        pytest.fail(f"cannot make network namespaces: {why}")
    made = Network.create()
    yield made
    made.remove()


def test_random_cuts_and_deaths_never_run_an_instance_twice(
        etcd_cluster: Callable[..., EtcdCluster], fleet: Fleet, network: Network) -> None:
    seed = int(os.environ.get("FLEET_CHAOS_SEED") or random.randrange(1 << 32))
    etcd = etcd_cluster(3, host=network.host_address)
    try:
        result = run_chaos(fleet, etcd, network, hives=int(os.environ.get("FLEET_CHAOS_HIVES", "5")),
                           rounds=int(os.environ.get("FLEET_CHAOS_ROUNDS", "8")), seed=seed)
    finally:
        fleet.close()  # the daemons first: the namespaces they run in go with the fixture
    assert result.overlaps == [], f"seed {seed}"
    assert len(result.rounds) == int(os.environ.get("FLEET_CHAOS_ROUNDS", "8"))
