"""The SLURM job templates submitted with ``sbatch`` to a real SLURM on the simulated nodes, with only their EDIT
lines filled in; the time-limit warning (what ``--signal`` sends) requeues and resumes, ``scancel`` ends the job;
``srun`` without a PMI is refused."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import pytest

from agora_marl.learners.run import read_metrics
from tests.cluster.jobs import STEPS_PER_UPDATE, TINY, agora, fill_in, job_env, require, tiny_config, wait_for
from tests.cluster.nodes import ROOT, Cluster, unavailable
from tests.cluster.slurm import ENDED, Slurm, not_installed
from tests.procs import leftovers

pytestmark = [pytest.mark.cluster, pytest.mark.mpi, pytest.mark.slow]
require(unavailable() or not_installed())

TEMPLATES = ROOT / "launch" / "templates"
#: srun's PMI for the venv's MPICH, on the templates' EDIT line.
PMI2 = {r"PMI=.*": "PMI=pmi2  # EDIT: the venv's MPICH takes PMI-2"}
#: The mpirun template's launch line for MPICH's Hydra instead of Open MPI's (both lines are EDIT lines).
HYDRA = {r"MPIRUN=\(mpirun .*": None, r"# (MPIRUN=\(mpiexec .*)": r"\1"}


def _edits(folder: Path, config: Path, nodes: int, tasks_per_node: int) -> dict[str, str | None]:
    """What a user of this cluster writes on the EDIT lines of a SLURM template (CPU nodes, the venv's MPICH)."""
    edits: dict[str, str | None] = {
        r"#SBATCH --partition=.*": "#SBATCH --partition=sim",
        r"#SBATCH --ntasks-per-node=.*": f"#SBATCH --ntasks-per-node={tasks_per_node}",
        r"#SBATCH --gpus-per-node=.*": None,
        r"#SBATCH --cpus-per-task=.*": "#SBATCH --cpus-per-task=1",
        r"#SBATCH --time=.*": "#SBATCH --time=15",
        r"module .*": None,
        r"source .*": f'source "{sys.prefix}/bin/activate"',
        r"CONFIG=.*": f"CONFIG={config}",
    }
    if nodes > 1:  # the one-node template fixes --nodes=1 and runs where it is submitted
        edits.update({r"#SBATCH --nodes=.*": f"#SBATCH --nodes={nodes}", r'cd "\$HOME/agora" .*': f'cd "{folder}"'})
    return edits


class Submitted:
    """A template filled in, written to its own folder on the shared filesystem and submitted with sbatch."""

    def __init__(self, slurm: Slurm, template: str, updates: int, nodes: int, tasks_per_node: int, **edits) -> None:
        self.slurm = slurm
        self.token = uuid.uuid4().hex
        self.folder = slurm.cluster.shared / f"{Path(template).stem}-{self.token[:8]}"
        self.folder.mkdir()
        config = tiny_config(self.folder / "tiny.toml", updates)
        script = self.folder / template
        script.write_text(
            fill_in(TEMPLATES / template, {**_edits(self.folder, config, nodes, tasks_per_node), **edits})
        )
        self.env = slurm.env(job_env(self.token))
        out = slurm.run(["sbatch", "--parsable", str(script)], env=self.env, cwd=self.folder).stdout
        self.id = int(out.strip().split(";")[0])
        self.run_dir = self.folder / "runs" / f"agora-mappo-{self.id}"

    def log(self) -> str:
        path = self.folder / f"agora-mappo-{self.id}.out"
        return path.read_text() if path.exists() else ""

    def rows(self) -> list[dict]:
        path = self.run_dir / "metrics.csv"
        return read_metrics(path) if path.exists() else []

    def wait_for_training(self, rows: int = 1) -> None:
        """Wait until the run has logged ``rows`` updates (failing at once if the job ends before)."""

        def trained() -> bool:
            assert self.slurm.job(self.id)["JobState"] not in ENDED, f"job {self.id} ended early:\n{self.log()}"
            return len(self.rows()) >= rows

        wait_for(trained, 180, f"job {self.id} to log {rows} update(s):\n{self.log()}", interval_s=0.5)

    def wait(self, timeout_s: float = 240) -> dict[str, str]:
        fields = self.slurm.wait(self.id, timeout_s)
        assert fields["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), (fields, self.log(), self.slurm.logs())
        return fields


@pytest.mark.parametrize(
    ("template", "nodes", "tasks_per_node"),
    [("slurm_1node.sbatch", 1, 2), ("slurm_nodes_srun.sbatch", 2, 1)],
    ids=["1node", "nodes-srun"],
)
def test_srun_template_trains_to_completion(slurm: Slurm, template: str, nodes: int, tasks_per_node: int) -> None:
    job = Submitted(slurm, template, updates=3, nodes=nodes, tasks_per_node=tasks_per_node, **PMI2)
    fields = job.wait()
    log = job.log()
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert f"agora doctor: 2 rank(s) on {nodes} node(s)" in log and "agora doctor: no problem found" in log
    assert f"agora: 2 rank(s) on {nodes} node(s), env servers: started per node" in log
    assert "agora train: done" in log
    assert [int(r["step"]) for r in job.rows()] == [STEPS_PER_UPDATE * (i + 1) for i in range(3)]
    assert leftovers(job.token) == []


def test_mpirun_template_requeues_at_the_time_limit_warning_and_resumes_to_completion(slurm: Slurm) -> None:
    """``scancel --signal=USR1 --batch`` sends what ``#SBATCH --signal=B:USR1@120`` sends ahead of the time limit."""
    job = Submitted(slurm, "slurm_nodes_mpirun.sbatch", updates=12, nodes=2, tasks_per_node=1, **HYDRA)
    job.wait_for_training()
    slurm.run(["scancel", "--signal=USR1", "--batch", str(job.id)])
    fields = job.wait()
    log = job.log()
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    assert (
        log.count("agora doctor: 2 rank(s) on 2 node(s)") == 2 and "agora train: SIGUSR1: stopped after update" in log
    )
    assert "agora train: done" in log
    assert [int(r["update"]) for r in job.rows()] == list(range(1, 13))  # the second part continued the first
    assert leftovers(job.token) == []


def test_scancel_ends_an_mpirun_job_without_requeueing_it(slurm: Slurm) -> None:
    job = Submitted(slurm, "slurm_nodes_mpirun.sbatch", updates=1000, nodes=2, tasks_per_node=1, **HYDRA)
    job.wait_for_training()
    slurm.run(["scancel", str(job.id)])
    assert leftovers(job.token, timeout_s=60) == []  # the whole job is over: script, mpirun, ranks, servers
    fields = slurm.wait(job.id, 60)
    assert (fields["JobState"], fields["Restarts"]) == ("CANCELLED", "0"), (fields, job.log())
    assert "agora train: SIGTERM: stopped after update" in job.log()  # with a checkpoint to resume from by hand
    assert list((job.run_dir / "checkpoints").glob("update_*.pt"))


def test_srun_without_a_pmi_is_refused_with_the_fix(slurm: Slurm, cluster: Cluster) -> None:
    """``srun --mpi=none`` (a common site default) starts tasks that MPI cannot join: train refuses, doctor says why."""
    token = uuid.uuid4().hex
    env = slurm.env(job_env(token))
    run_dir = cluster.shared / "srun-no-pmi"
    srun = ["srun", "--mpi=none", "--nodes=2", "--ntasks=2"]
    train = slurm.run([*srun, *agora("train", f"run.dir={run_dir}", *TINY)], env=env, timeout=120, check=False)
    assert train.returncode != 0
    refusals = re.findall(r"agora train: error: srun started 2 tasks .*srun --mpi=pmi2.*", train.stderr)
    assert len(refusals) == 2, train.stdout + train.stderr  # every task refuses, none trains
    assert not run_dir.exists()
    doctor = slurm.run([*srun, *agora("doctor")], env=env, timeout=120, check=False)
    assert doctor.returncode != 0 and "srun --mpi=pmi2" in doctor.stdout, doctor.stdout + doctor.stderr
    assert leftovers(token) == []
