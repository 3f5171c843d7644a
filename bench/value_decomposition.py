"""VDN and QMIX against IDQN in a world where credit assignment matters: the same settings, steps and seeds.

    .venv/bin/python bench/value_decomposition.py --steps 30000 --seeds 1 2 3 --plot docs/images/value_decomposition.png
    .venv/bin/python bench/value_decomposition.py --scenario foraging_v0 --config max_cycles=25 --steps 30000

Each learner trains in process through one env server (``train`` of learners.training, as ``agora train`` does) with
the settings of launch/configs/vdn_homing.toml, shared by all three so that only the value decomposition differs
(IDQN's batch counts transitions, the others' rows: IDQN gets 4 × as many, one per seat). It prints, per algorithm
and seed, the training return (mean of the last 100 episodes, epsilon-greedy) at quarters of the budget and the
greedy return of the final policy over ``--episodes`` episodes, next to random, noop and scripted play in the same
worlds; ``--plot`` draws the training curves (mean over seeds). Figures, not assertions: the CI test
(tests/test_learners_value_decomposition.py) asserts what must hold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from agora_marl.envserver.process import ServerProcesses
from agora_marl.launch.matches import side_policy, trained_run
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run, read_metrics
from agora_marl.learners.trained import evaluate, load_trained_policy
from agora_marl.learners.training import train

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("vdn", "qmix", "idqn")
#: Shared by the three learners (the values of launch/configs/vdn_homing.toml).
SHARED = ["lr=5e-4", "eps_fraction=0.3", "learning_starts=1000", "target_every=200", "gradient_steps=16"]


def _train(algo: str, scenario: str, config: list[str], steps: int, seed: int, worlds: int, directory: Path, servers):
    batch = "batch_size=512" if algo == "idqn" else "batch_size=128"  # 128 rows of 4 seats
    overrides = [f"algo={algo}", f"env.scenario={scenario}", f"env.num_worlds={worlds}", f"run.total_steps={steps}"]
    overrides += [f"run.seed={seed}", "run.progress=false", *(f"{algo}.{s}" for s in (*SHARED, batch))]
    overrides += [f"env.config.{c}" for c in config]
    run = Run.create(load_config(None, overrides), directory)
    started = time.perf_counter()
    train(run.config, run, servers.addresses)
    run.close()
    return time.perf_counter() - started


def _curve(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in read_metrics(directory / "metrics.csv") if r.get("return_recent")]
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["return_recent"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="homing_v0")
    parser.add_argument("--config", nargs="*", default=[], help="env.config entries, KEY=VALUE (TOML values)")
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--worlds", type=int, default=32)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--plot", type=Path, help="write the training curves to this PNG")
    args = parser.parse_args()

    curves: dict[str, list] = {algo: [] for algo in ALGORITHMS}
    with ServerProcesses(count=1) as servers, tempfile.TemporaryDirectory() as tmp:
        env_config = dict(load_config(None, [f"env.config.{c}" for c in args.config]).env.config)
        print(f"{args.scenario} {env_config}: {args.steps} steps per run, {args.worlds} worlds, seeds {args.seeds}")
        print(f"{'algo':<6} {'seed':>4}  {'training return at 1/4, 1/2, 3/4, 1 of the steps':<44} greedy   time")
        for seed in args.seeds:
            for algo in ALGORITHMS:
                directory = Path(tmp) / f"{algo}-{seed}"
                seconds = _train(algo, args.scenario, args.config, args.steps, seed, args.worlds, directory, servers)
                steps, returns = _curve(directory)
                curves[algo].append((steps, returns))
                marks = [returns[np.searchsorted(steps, q * args.steps * 0.999)] for q in (0.25, 0.5, 0.75, 1.0)]
                greedy = evaluate(
                    load_trained_policy(directory), servers.addresses, args.scenario, env_config, args.episodes
                )
                quarters = "  ".join(f"{m:7.1f}" for m in marks)
                print(f"{algo:<6} {seed:>4}  {quarters:<44} {greedy.mean():7.1f}  {seconds:5.0f} s", flush=True)
        spec = trained_run(Path(tmp) / f"vdn-{args.seeds[0]}").spec
        for name in ("random", "noop", "scripted"):
            try:
                policy = side_policy(name, list(spec.possible_agents), spec, seed=1)
            except ValueError:
                continue
            returns = evaluate(policy, servers.addresses, args.scenario, env_config, args.episodes)
            print(f"{name:<11} {'':<44} {returns.mean():7.1f}")
    if args.plot:
        _plot(curves, args)


def _plot(curves: dict[str, list], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    grid = np.linspace(0, args.steps, 60)
    for algo, runs in curves.items():
        ys = np.array([np.interp(grid, steps, returns, left=np.nan) for steps, returns in runs])
        axis.plot(grid, np.nanmean(ys, axis=0), label=f"{algo} (mean of {len(runs)} seeds)")
        axis.fill_between(grid, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), alpha=0.15)
    axis.set_xlabel("world-steps")
    axis.set_ylabel("team return (last 100 episodes)")
    axis.set_title(f"{args.scenario}: value decomposition vs independent Q-learning")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
