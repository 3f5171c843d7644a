"""`agora doctor` as a user runs it: alone, under a real ``mpirun -n 2``, and on misconfigurations it must catch."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def _doctor(*args: str, ranks: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agora_marl", "doctor", *args]
    if ranks > 1:
        if MPIRUN is None:
            pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
        command = [MPIRUN, "-n", str(ranks), *command]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


def _rank_rows(out: str) -> list[list[str]]:
    table = out.split("env servers\n", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in table.splitlines()]


def test_doctor_alone_reports_mpi_torch_and_a_reachable_local_server() -> None:
    done = _doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agora doctor: 1 rank(s) on 1 node(s)" in done.stdout
    assert "MPI library" in done.stdout and "mpi4py" in done.stdout and "torch" in done.stdout
    assert "CUDA-aware MPI         library: no" in done.stdout
    (row,) = _rank_rows(done.stdout)
    assert row[0] == "0" and row[3] == "0/1" and row[5] == "cpu" and row[-1] == "ms"
    assert "agora doctor: no problem found" in done.stdout


@pytest.mark.mpi
@pytest.mark.slow
def test_doctor_under_mpirun_reports_both_ranks() -> None:
    done = _doctor(ranks=2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("agora doctor: 2 rank(s) on 1 node(s)") == 1  # rank 0 alone prints
    assert "launcher               PMI_SIZE=2" in done.stdout
    rows = _rank_rows(done.stdout)
    assert [(r[0], r[3]) for r in rows] == [("0", "0/2"), ("1", "1/2")]
    assert all(r[-1] == "ms" for r in rows) and rows[0][-3] != rows[1][-3]  # one node server each, both answer
    assert "agora doctor: no problem found" in done.stdout


def test_doctor_fails_on_an_unreachable_server() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    done = _doctor("--connect", address, "--timeout", "1")
    assert done.returncode == 1
    assert f"rank(s) 0 cannot reach the env server {address}: TimeoutError" in done.stdout


def test_doctor_fails_when_the_launcher_started_more_ranks_than_mpi_sees() -> None:
    # What Open MPI's mpirun starting an MPICH-linked mpi4py looks like: each process is a job of its own.
    done = _doctor(env={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})
    assert done.returncode == 1
    assert "OMPI_COMM_WORLD_SIZE=2 says 2 ranks were started, but MPI sees 1" in done.stdout


def test_doctor_fails_on_an_mpirun_of_another_implementation(tmp_path) -> None:
    fake = tmp_path / "mpirun"
    fake.write_text('#!/bin/sh\necho "mpirun (Open MPI) 5.0.5"\n')
    fake.chmod(0o755)
    done = _doctor(env={"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert done.returncode == 1
    assert f"the mpirun on PATH ({fake}) is Open MPI 5.0.5, but mpi4py loaded MPICH" in done.stdout


def test_doctor_names_the_pmi_when_srun_started_tasks_without_one() -> None:
    # `srun --mpi=none agora doctor` (a common site default): each task is a job of one.
    env = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"}
    done = _doctor(env=env)
    assert done.returncode == 1
    assert "srun started 2 tasks" in done.stdout and "srun --mpi=pmi2" in done.stdout
    assert "rebuild mpi4py" not in done.stdout
