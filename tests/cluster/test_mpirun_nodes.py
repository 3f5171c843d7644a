"""``mpirun`` (MPICH's Hydra) across two simulated nodes: doctor, training with each node's servers, servers given
by connection file from the other node, and MPMD server ranks on the other node."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from agora_marl.envserver.protocol.connection import read_connection_file
from agora_marl.learners.run import read_metrics
from tests.cluster.jobs import TINY, NodeJob, agora, hydra, require, wait_for
from tests.cluster.nodes import Cluster, unavailable
from tests.procs import leftovers, pids_with

pytestmark = [pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow]
require(unavailable())


def _placement(err: str) -> list[str]:
    """The lines rank 0 prints about which ranks use which servers."""
    return [line for line in err.splitlines() if line.startswith("agora:   node ")]


def test_doctor_sees_both_nodes_and_their_servers(cluster: Cluster) -> None:
    doctor = hydra(cluster, "-hosts", "node1,node2", "-n", "2", "-ppn", "1", *agora("doctor"))
    with NodeJob(cluster.nodes[0], doctor) as job:
        code, out, err = job.wait(120)
    assert code == 0, out + err
    assert "agora doctor: 2 rank(s) on 2 node(s) (node1 is rank 0)" in out
    rows = out.split("env servers\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [row.split()[:3] for row in rows] == [["0", "0", "node1"], ["1", "1", "node2"]]
    assert all(row.endswith(" ms") and "ipc://" in row for row in rows), out  # each node's server answered its rank
    assert "agora doctor: no problem found" in out
    assert leftovers(job.token) == []


def test_train_on_two_nodes_runs_each_nodes_servers_there_and_stays_in_sync(cluster: Cluster) -> None:
    node1, node2 = cluster.nodes
    run_dir = cluster.shared / "train-two-nodes"
    settings = ["run.total_steps=1600", "env.servers=1", "run.sync_every=1"]  # 4 updates, each checked in sync
    command = hydra(cluster, "-hosts", "node1,node2", "-n", "4", "-ppn", "2", *agora("train", f"run.dir={run_dir}"))
    crossed = cluster.bridge_counters(node2)
    namespaces: dict[int, int] = {}
    with NodeJob(node1, [*command, *TINY, *settings]) as job:

        def servers_seen() -> bool:
            for pid in pids_with(job.token):
                if pid not in namespaces and b"agora_marl.envserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    namespaces[pid] = os.stat(f"/proc/{pid}/ns/net").st_ino
            return len(namespaces) >= 2 or job.proc.poll() is not None

        wait_for(servers_seen, 120, "the env servers of both nodes")
        code, out, err = job.wait(180)
    assert code == 0, out + err  # a parameter drift between the ranks would have failed it (run.sync_every=1)
    assert "agora: 4 rank(s) on 2 node(s), env servers: started per node" in err
    lines = _placement(err)
    assert len(lines) == 2 and lines[0].startswith("agora:   node 0 (node1): ipc://"), err
    assert lines[0].endswith("<- rank(s) 0 1") and lines[1].startswith("agora:   node 1 (node2): ipc://"), err
    assert lines[1].endswith("<- rank(s) 2 3"), err
    assert sorted(namespaces.values()) == sorted(node.namespace_inode() for node in cluster.nodes)
    assert [len(list((run_dir / "servers" / f"node{i}").glob("server*.log"))) for i in (0, 1)] == [1, 1]
    assert [int(r["step"]) for r in read_metrics(run_dir / "metrics.csv")] == [400, 800, 1200, 1600]
    received, sent = cluster.bridge_counters(node2)
    assert received - crossed[0] > 100_000 and sent - crossed[1] > 100_000  # the gradients crossed the bridge
    assert leftovers(job.token) == []


def test_train_connects_to_workers_served_from_the_other_node_through_their_connection_file(cluster: Cluster) -> None:
    node1, node2 = cluster.nodes
    addr_file = cluster.shared / "served-from-node2.json"
    serve = agora("serve", "--bind", "tcp://0.0.0.0:0", "--workers", "2", "--addr-file", str(addr_file))
    with NodeJob(node2, [*serve, "--log-level", "WARNING"]) as server:
        wait_for(lambda: addr_file.exists() or server.proc.poll() is not None, 60, "agora serve's connection file")
        addresses = read_connection_file(addr_file)
        assert len(addresses) == 2 and all(a.startswith("tcp://node2:") for a in addresses), addresses
        run_dir = cluster.shared / "train-connect"
        train = agora("train", "--connect", str(addr_file), f"run.dir={run_dir}", *TINY, "run.total_steps=400")
        with NodeJob(node1, hydra(cluster, "-hosts", "node1", "-n", "2", *train)) as job:
            code, out, err = job.wait(180)
        assert code == 0, out + err
        assert "env servers: given (--connect)" in err
        assert sorted(_placement(err)) == sorted(
            f"agora:   node 0 (node1): {address} <- rank(s) {rank}" for rank, address in enumerate(addresses)
        ), err
        assert len(read_metrics(run_dir / "metrics.csv")) == 2
        server.proc.send_signal(signal.SIGINT)  # agora serve --workers stops its workers and ends cleanly
        code, out, err = server.wait(30)
        assert code == 0, out + err
    assert leftovers(job.token) == [] and leftovers(server.token) == []


def test_mpmd_learners_use_the_server_rank_of_the_other_node(cluster: Cluster) -> None:
    run_dir = cluster.shared / "train-mpmd"
    addr_file = cluster.shared / "mpmd-servers.json"
    train = agora("train", f"run.dir={run_dir}", *TINY, "run.total_steps=400")
    serve = agora("serve", "--bind", "tcp://0.0.0.0:0", "--addr-file", str(addr_file), "--log-level", "WARNING")
    command = hydra(cluster, "-hosts", "node1:2,node2:1", "-n", "2", *train, ":", "-n", "1", *serve)
    with NodeJob(cluster.nodes[0], command) as job:
        code, out, err = job.wait(180)
    assert code == 0, out + err
    assert "agora serve: 1 server rank(s) for 2 learner rank(s)" in err
    assert "env servers: MPMD server ranks" in err
    (address,) = json.loads(addr_file.read_text())["addresses"]
    assert address.startswith("tcp://node2:")
    assert _placement(err) == [f"agora:   node 0 (node1): {address} <- rank(s) 0 1"], err
    assert len(read_metrics(run_dir / "metrics.csv")) == 2
    assert leftovers(job.token) == []
