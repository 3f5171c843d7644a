"""The simulated cluster, shared by every test of this folder: two nodes (and SLURM on them) made once, removed when the
folder's tests are done.

It needs root, ``ip netns`` and, for SLURM, Debian's slurm-wlm, munge and libpmix-dev (``bash launch/install.sh``
installs them where it runs as root with apt-get). Where it cannot run, its test modules skip with one line saying
why (:func:`tests.cluster.jobs.require`); in CI (``CI`` set) the fixtures fail every test instead, so that CI never
passes without running them.

``AGORA_CLUSTER_KEEP=1`` leaves the cluster (namespaces, daemons, ``/var/tmp/agora-cluster/<id>``) in place after the
tests, to look around in it; the next run of them, or ``python -m tests.cluster.nodes --cleanup``, removes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.nodes import Cluster, cleanup_leftovers, unavailable
from tests.cluster.slurm import Slurm, not_installed


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """Two simulated nodes, node1 and node2, on a private bridge; removed when this folder's tests are done."""
    reason = unavailable()
    if reason:  # in CI only: elsewhere the test modules skip (tests.cluster.jobs.require)
        pytest.fail(f"simulated cluster: {reason} (CI must run these tests)", pytrace=False)
    cleanup_leftovers()
    nodes = Cluster(nodes=2)
    try:
        yield nodes.start()
    finally:
        if not _keep():
            nodes.stop()


@pytest.fixture(scope="package")
def slurm(cluster: Cluster) -> Iterator[Slurm]:
    """slurmctld on node1, a slurmd on each node, munge: started once for this folder's tests."""
    reason = not_installed()
    if reason:  # in CI only, as above
        pytest.fail(f"simulated cluster: {reason} (CI must run these tests)", pytrace=False)
    daemons = Slurm(cluster)
    try:
        yield daemons.start()
    finally:
        if not _keep():
            daemons.stop()


def _keep() -> bool:
    return os.environ.get("AGORA_CLUSTER_KEEP", "") not in ("", "0")
