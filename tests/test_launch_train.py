"""`agora train`, `agora eval` and `agora plot` as a user runs them: real subprocesses, their own env servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agora_marl.learners.config import load_config
from agora_marl.learners.run import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def _agora(*args: str, timeout: float = 120, ranks: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    command = [sys.executable, "-m", "agora_marl", *args]
    if ranks > 1:
        command = [MPIRUN, "-n", str(ranks), *command]
    else:
        env["AGORA_MPI"] = "off"
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_eval_plot_on_a_tiny_budget(tmp_path) -> None:
    run_dir = tmp_path / "run"
    trained = _agora(
        "train",
        "run.total_steps=2000",
        "env.num_worlds=8",
        "run.checkpoint_every=5",
        f"run.dir={run_dir}",
        "ppo.epochs=2",
    )
    assert trained.returncode == 0, trained.stderr
    assert "agora train: done" in trained.stdout
    config = load_config(run_dir / "config.toml")
    assert config.algo == "mappo" and config.run.total_steps == 2000 and config.env.num_worlds == 8
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [200 * (i + 1) for i in range(10)]
    assert all(r["return"] for r in rows)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["update_0000005.pt", "update_0000010.pt"]

    resumed = _agora("train", "--resume", str(run_dir), "run.total_steps=2400")
    assert resumed.returncode == 0, resumed.stderr
    assert int(read_metrics(run_dir / "metrics.csv")[-1]["step"]) == 2400

    evaluated = _agora("eval", str(run_dir), "--episodes", "10")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "10 episodes per policy (trained: greedy)" in evaluated.stdout and "trained  return " in evaluated.stdout

    plotted = _agora("plot", str(run_dir))
    assert plotted.returncode == 0, plotted.stderr
    png = run_dir / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_refuses_bad_settings_with_the_fix(tmp_path) -> None:
    result = _agora("train", "ppo.lrr=1", f"run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode != 0 and "unknown key(s) ['lrr'] in [ppo]" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.mpi
@pytest.mark.slow
def test_train_under_mpirun_keeps_ranks_in_sync(tmp_path) -> None:
    """Two ranks, each with its own server and worlds, check parameter sync after every update; rank 0 writes."""
    if MPIRUN is None:
        pytest.skip("no mpirun on PATH or next to the interpreter: install an MPI (pip install mpich)")
    run_dir = tmp_path / "run"
    args = ["train", "run.total_steps=2000", "env.num_worlds=4", "run.sync_every=1", f"run.dir={run_dir}"]
    trained = _agora(*args, "ppo.epochs=2", "ppo.minibatches=2", ranks=2)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.count("agora train: done") == 1  # rank 0 alone reports
    rows = read_metrics(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [200 * (i + 1) for i in range(10)]  # 2 ranks x 4 worlds x 25 steps
    assert float(rows[0]["episodes"]) == 8  # both ranks' episodes are counted
