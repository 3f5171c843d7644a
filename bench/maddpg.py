"""MADDPG next to MAPPO on continuous simple_spread at the same wall time, one run after the other.

    .venv/bin/python bench/maddpg.py --minutes 5 --plot docs/images/maddpg_vs_mappo.png

Each learner is a real ``agora train`` (its own env server, the default threads) with its ready config
(launch/configs/maddpg_simple_spread_continuous.toml, launch/configs/mappo_simple_spread_continuous.toml), stopped
with SIGTERM after ``--minutes`` (it checkpoints and exits, as under a scheduler's time limit), then evaluated greedily
with ``agora eval --baselines`` (random, noop and scripted in the same seeded worlds). It prints each learner's
training return (mean of the updates around the mark) at fractions of the wall time, its steps, and the greedy
return; ``--plot`` draws return against wall time and against steps. Figures, not assertions: the CI test
(tests/test_learners_maddpg.py) asserts what must hold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agora_marl.learners.run import read_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "maddpg": ROOT / "launch" / "configs" / "maddpg_simple_spread_continuous.toml",
    "mappo": ROOT / "launch" / "configs" / "mappo_simple_spread_continuous.toml",
}


def _train(config: Path, directory: Path, seconds: float, seed: int) -> None:
    command = [sys.executable, "-m", "agora_marl", "train", "--config", str(config), f"run.dir={directory}"]
    command += [f"run.seed={seed}", "run.progress=false", "run.total_steps=100000000"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "AGORA_MPI": "off"})
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # stops after the next logged update, with a checkpoint (exit 75)
        process.wait(timeout=300)


def _evaluate(directory: Path, episodes: int) -> dict[str, float]:
    command = [sys.executable, "-m", "agora_marl", "eval", str(directory), "--episodes", str(episodes)]
    done = subprocess.run([*command, "--baselines", "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    return {row["policy"]: row["return"]["mean"] for row in json.loads(done.stdout)["policies"]}


def _curve(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [r for r in read_metrics(directory / "metrics.csv") if r.get("return")]
    returns = np.array([float(r["return"]) for r in rows])
    window = max(1, len(rows) // 20)
    smooth = np.array([returns[max(0, i - window) : i + 1].mean() for i in range(len(returns))])
    return np.array([float(r["time_s"]) for r in rows]), np.array([int(r["step"]) for r in rows]), smooth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall time of each learner")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--plot", type=Path, help="write the curves to this PNG")
    args = parser.parse_args()
    seconds = 60 * args.minutes
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            directory = Path(tmp) / name
            started = time.perf_counter()
            _train(config, directory, seconds, args.seed)
            print(f"{name}: trained {time.perf_counter() - started:.0f} s", flush=True)
            curves[name] = _curve(directory)
            greedy = _evaluate(directory, args.episodes)
            wall, steps, returns = curves[name]
            marks = [returns[min(len(returns) - 1, np.searchsorted(wall, q * seconds))] for q in (0.25, 0.5, 1.0)]
            print(
                f"{name}: training return at 1/4, 1/2, all of {args.minutes:g} min: "
                + ", ".join(f"{m:.1f}" for m in marks)
                + f"; {steps[-1]} steps; greedy {greedy['trained']:.1f} over {args.episodes} episodes "
                + f"(random {greedy['random']:.1f}, noop {greedy['noop']:.1f}, scripted {greedy['scripted']:.1f})",
                flush=True,
            )
    if args.plot:
        _plot(curves, args)


def _plot(curves: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (by_time, by_steps) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for name, (wall, steps, returns) in curves.items():
        by_time.plot(wall / 60, returns, label=name)
        by_steps.plot(steps, returns, label=name)
    by_time.set_xlabel("wall time (minutes, 2 cores)")
    by_steps.set_xlabel("world-steps")
    by_steps.set_xscale("log")
    for axis in (by_time, by_steps):
        axis.set_ylabel("team return")
        axis.legend(loc="lower right")
    figure.suptitle("continuous simple_spread (N=3): MADDPG and MAPPO, same wall time")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
