"""The PBS job templates run by hand on the simulated nodes (there is no PBS server): ``PBS_*`` set as PBS sets them,
a ``qsub`` that records its submission, only the EDIT lines filled in. The timer's SIGUSR1 resubmits, qdel's SIGTERM
ends the job, and nothing of the script (its timer included) outlives it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from agora_marl.learners.run import read_metrics
from tests.cluster.jobs import STEPS_PER_UPDATE, NodeJob, fill_in, require, tiny_config, wait_for
from tests.cluster.nodes import ROOT, Cluster, unavailable
from tests.procs import leftovers

pytestmark = [pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow]
require(unavailable())

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


@pytest.mark.parametrize("template", ["pbs_1node.pbs", "pbs_nodes.pbs"])
def test_script_trains_to_completion_and_leaves_nothing_behind(cluster: Cluster, template: str) -> None:
    job = ByHand(cluster, template, Path(template).stem.replace("_", "-"), updates=3, stop_after_s=3600)
    with job.start() as run:
        code, out, err = run.wait(180)
    assert code == 0, out + err
    nodes = 2 if template == "pbs_nodes.pbs" else 1
    assert f"agora doctor: 2 rank(s) on {nodes} node(s)" in out and "agora doctor: no problem found" in out
    assert "agora train: done" in out
    assert [int(r["step"]) for r in job.rows()] == [STEPS_PER_UPDATE * (i + 1) for i in range(3)]
    assert job.submissions() == []
    assert leftovers(run.token, timeout_s=5) == []  # the timer included: no `sleep 3600` behind


def test_timer_resubmits_and_qdel_ends_the_next_part(cluster: Cluster) -> None:
    job = ByHand(cluster, "pbs_1node.pbs", "pbs-timer", updates=1000, stop_after_s=10)
    with job.start() as run:
        code, out, err = run.wait(180)
    assert code == 75, out + err
    assert "agora train: SIGUSR1: stopped after update" in out
    assert job.submissions() == [f"-N pbs-timer {job.script}"]
    assert leftovers(run.token, timeout_s=5) == []
    stopped = len(job.rows())

    # The next part, as the resubmitted job runs it (its walltime anew: the timer far off), continues the run; qdel.
    next_part = ByHand(cluster, "pbs_1node.pbs", "pbs-timer", updates=1000, stop_after_s=3600)
    with next_part.start() as run:
        wait_for(lambda: len(job.rows()) > stopped or run.proc.poll() is not None, 180, "the resumed run's update")
        os.killpg(run.proc.pid, signal.SIGTERM)  # qdel: SIGTERM to the job's processes
        code, out, err = run.wait(120)
    assert code == 75, out + err
    assert "agora train: SIGTERM: stopped after update" in out
    assert job.submissions() == [f"-N pbs-timer {job.script}"]  # a cancelled job is not submitted again
    rows = [int(r["update"]) for r in job.rows()]
    assert rows == list(range(1, len(rows) + 1)) and len(rows) > stopped  # one run, continued
    assert leftovers(run.token, timeout_s=5) == []
