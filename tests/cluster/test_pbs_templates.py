"""The PBS job templates run by hand on the simulated nodes (there is no PBS server): ``PBS_*`` set as PBS sets them,
a ``qsub`` that records its submission, only the EDIT lines filled in. The timer's SIGUSR1 resubmits, qdel's SIGTERM
ends the job, and nothing of the script (its timer included) outlives it."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from agora_marl.learners.run import read_metrics
from tests.cluster.jobs import NodeJob, fill_in, tiny_config, wait_for
from tests.cluster.nodes import ROOT, Cluster
from tests.procs import leftovers

pytestmark = [pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow]

TEMPLATES = ROOT / "launch" / "templates"
_QSUB = '#!/bin/sh\necho "$@" >> "$(dirname "$0")/../qsub.log"\n'


class ByHand:
    """A PBS template filled in and run as PBS would run it on the first node of its job."""

    def __init__(self, cluster: Cluster, template: str, name: str, updates: int, stop_after_s: int) -> None:
        self.cluster = cluster
        self.folder = cluster.shared / name
        (self.folder / "bin").mkdir(parents=True, exist_ok=True)
        qsub = self.folder / "bin" / "qsub"
        qsub.write_text(_QSUB)
        qsub.chmod(0o755)
        self.name = name
        self.config = tiny_config(self.folder / "tiny.toml", updates)
        self.script = self.folder / template
        edits: dict[str, str | None] = {
            r"module .*": None,
            r"source .*": f'source "{sys.prefix}/bin/activate"',
            r"CONFIG=.*": f"CONFIG={self.config}",
            r"STOP_AFTER_S=.*": f"STOP_AFTER_S={stop_after_s}  # EDIT",
            r"SCRIPT=.*": f"SCRIPT={self.script}  # EDIT",
        }
        if template == "pbs_1node.pbs":
            edits[r"MPIRUN=\(mpirun .*"] = "MPIRUN=(mpirun -np 2)  # EDIT"
            nodes = ["node1", "node1"]
        else:
            edits.update({r"PER_NODE=.*": "PER_NODE=1  # EDIT", r"MPIRUN=\(mpirun .*": None})
            edits[r"# (MPIRUN=\(mpiexec -f .*)"] = r"\1"  # MPICH's Hydra
            nodes = ["node1", "node2"]
        self.script.write_text(fill_in(TEMPLATES / template, edits))
        (self.folder / "nodefile").write_text("".join(f"{node}\n" for node in nodes))
        self.run_dir = self.folder / "runs" / name

    def start(self) -> NodeJob:
        """Run the script on node1 as PBS would (its own session, PBS_* set, the site's ssh for Hydra)."""
        env = {
            "PBS_O_WORKDIR": str(self.folder),
            "PBS_JOBNAME": self.name,
            "PBS_JOBID": f"{self.name}.sim",
            "PBS_NODEFILE": str(self.folder / "nodefile"),
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "HYDRA_LAUNCHER": "ssh",
            "HYDRA_LAUNCHER_EXEC": str(self.cluster.launcher),
            "PATH": f"{self.folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        return NodeJob(self.cluster.nodes[0], ["bash", str(self.script)], cwd=self.folder, **env)

    def submissions(self) -> list[str]:
        log = self.folder / "qsub.log"
        return log.read_text().splitlines() if log.exists() else []

    def rows(self) -> list[dict]:
        path = self.run_dir / "metrics.csv"
        return read_metrics(path) if path.exists() else []


def test_one_node_script_ends_on_qdel_and_completes_when_run_again(cluster: Cluster) -> None:
    job = ByHand(cluster, "pbs_1node.pbs", "pbs-one-node", updates=6, stop_after_s=3600)
    with job.start() as run:
        wait_for(lambda: len(job.rows()) >= 1 or run.proc.poll() is not None, 180, "the first update")
        os.killpg(run.proc.pid, signal.SIGTERM)  # qdel: SIGTERM to the job's processes
        code, out, err = run.wait(120)
    assert code == 75, out + err
    assert "agora train: SIGTERM: stopped after update" in out
    assert job.submissions() == []  # a cancelled job ends
    assert leftovers(run.token, timeout_s=5) == []  # the timer included: no `sleep 3600` behind
    stopped = len(job.rows())

    with job.start() as run:  # the user continues it: the same script finds the run and resumes it
        code, out, err = run.wait(180)
    assert code == 0, out + err
    assert "agora doctor: no problem found" in out and "agora train: done" in out
    assert [int(r["update"]) for r in job.rows()] == list(range(1, 7)) and stopped < 6
    assert job.submissions() == []
    assert leftovers(run.token, timeout_s=5) == []


def test_nodes_script_resubmits_at_its_timer_and_the_next_part_completes(cluster: Cluster) -> None:
    job = ByHand(cluster, "pbs_nodes.pbs", "pbs-nodes", updates=20, stop_after_s=8)
    with job.start() as run:
        code, out, err = run.wait(180)
    assert code == 75, out + err  # 20 updates take longer than 8 s here: the timer stopped it
    assert "agora doctor: 2 rank(s) on 2 node(s)" in out and "agora train: SIGUSR1: stopped after update" in out
    assert job.submissions() == [f"-N pbs-nodes {job.script}"]
    assert leftovers(run.token, timeout_s=5) == []
    stopped = len(job.rows())

    # The submitted next part: a job with its own walltime, in which the rest of the run fits.
    next_part = ByHand(cluster, "pbs_nodes.pbs", "pbs-nodes", updates=20, stop_after_s=3600)
    with next_part.start() as run:
        code, out, err = run.wait(180)
    assert code == 0, out + err
    assert "agora train: done" in out
    assert [int(r["update"]) for r in job.rows()] == list(range(1, 21)) and stopped < 20  # one run, continued
    assert job.submissions() == [f"-N pbs-nodes {job.script}"]
    assert leftovers(run.token, timeout_s=5) == []
