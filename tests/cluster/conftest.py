"""The simulated cluster, shared by every test of this folder: two nodes (and SLURM on them) made once, removed when the
folder's tests are done.

It needs root, ``ip netns`` and, for SLURM, Debian's slurm-wlm, munge and libpmix-dev (``bash launch/install.sh``
installs them where it runs as root with apt-get). Where it cannot run, its tests skip with one line saying why;
in CI (``CI`` set) they fail instead, so that CI never passes without running them.

``AGORA_CLUSTER_KEEP=1`` leaves the cluster (namespaces, daemons, ``/var/tmp/agora-cluster/<id>``) in place after the
tests, to look around in it; the next run of them, or ``python -m tests.cluster.nodes --cleanup``, removes it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster import slurm as slurm_module
from tests.cluster.nodes import Cluster, cleanup_leftovers
from tests.cluster.slurm import Slurm


def _cannot(reason: str) -> None:
    message = f"simulated cluster: {reason}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI must run these tests)", pytrace=False)
    pytest.skip(message)


def _why_no_nodes() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces); run as root or deselect with -m 'not cluster'"
    absent = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if absent:
        return f"needs {', '.join(absent)} (Debian: iproute2, util-linux)"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"`ip netns` does not work here: {done.stderr.strip()}"
    return ""


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    """Two simulated nodes, node1 and node2, on a private bridge; removed when this folder's tests are done."""
    reason = _why_no_nodes()
    if reason:
        _cannot(reason)
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
    absent = slurm_module.missing()
    if absent:
        _cannot(f"SLURM is not installed ({', '.join(absent)}): `bash launch/install.sh` installs it as root")
    daemons = Slurm(cluster)
    try:
        yield daemons.start()
    finally:
        if not _keep():
            daemons.stop()


def _keep() -> bool:
    return os.environ.get("AGORA_CLUSTER_KEEP", "") not in ("", "0")
