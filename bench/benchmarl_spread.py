"""BenchMARL on simple_spread, measured as bench/algorithm_table.py measures agora: the team return at a budget of
steps and at a wall time, on the same machine, one after the other.

It runs in a virtual environment of its own (never the project's: BenchMARL pins torchrl 0.11 and needs PettingZoo
1.24, whose ``pettingzoo.mpe`` is the simple_spread that agora serves through ``mpe2``)::

    python3 -m venv /tmp/benchmarl-venv
    /tmp/benchmarl-venv/bin/pip install torch==2.13.0          # first and pinned: no CUDA wheels
    /tmp/benchmarl-venv/bin/pip install torch==2.13.0 torchvision==0.28.0 benchmarl==1.5.2 vmas \
        "pettingzoo[mpe]==1.24.3"
    /tmp/benchmarl-venv/bin/python bench/benchmarl_spread.py --algorithm mappo --steps 50000 --seconds 100

The task is PettingZoo's ``simple_spread_v3`` with agora's default config (N=3, 25-step episodes, local_ratio 0.5,
discrete actions), through BenchMARL's ``PettingZooTask.SIMPLE_SPREAD`` (TorchRL's ``PettingZooEnv``); every setting
of BenchMARL's is its default (``benchmarl/conf``: the experiment, the algorithm, an MLP of [256, 256]) except the
episode length, the device (CPU), rendering and loggers (off), evaluation (greedy, 100 episodes, after the last
iteration) and, for the off-policy algorithms, the epsilon schedule (over the first third of the step budget, where
BenchMARL's default spans a third of its frame budget). ``--task vmas`` runs VMAS's simple_spread instead (N=3, 25
steps, vectorised in torch). The run stops at the first iteration that has passed both budgets (or at ``--cap`` times
the time budget, then with no figure at a step budget it has not reached). Returns are agora's team return: the sum
over the agents of an episode's rewards (BenchMARL logs the mean over agents). A frame is one environment step of one
world, as agora's steps are. Prints one JSON object: per iteration (frames, seconds since the experiment was built,
mean team return of the episodes that ended in it), the figures at both budgets (the mean of the iterations in the
last tenth of each, as bench/algorithm_table.py takes them), the greedy evaluation and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from benchmarl.algorithms import IppoConfig, IqlConfig, MaddpgConfig, MappoConfig, MasacConfig, QmixConfig, VdnConfig
from benchmarl.environments import PettingZooTask, VmasTask
from benchmarl.experiment import Callback, Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig

ALGORITHMS = {
    "mappo": MappoConfig,
    "ippo": IppoConfig,
    "iql": IqlConfig,
    "vdn": VdnConfig,
    "qmix": QmixConfig,
    "maddpg": MaddpgConfig,
    "masac": MasacConfig,
}


class Budget(Callback):
    """Records each iteration's frames, time and team return; ends the run once both budgets have passed, or at
    ``cap`` times the time budget."""

    def __init__(self, steps: int, seconds: float, cap: float, started: float):
        super().__init__()
        self.steps, self.seconds, self.cap, self.started = steps, seconds, cap, started
        self.rows: list[dict] = []
        self.frames = 0
        self.last = False
        self.greedy: list[float] = []

    def on_batch_collected(self, batch) -> None:
        self.frames += batch.numel()
        team = []
        for group in self.experiment.group_map:
            done = batch.get(("next", "done")).squeeze(-1)
            episode = batch.get(("next", group, "episode_reward")).sum(dim=-2).squeeze(-1)  # sum over the agents
            team.append(episode[done])
        returns = torch.stack(team).sum(0) if team else torch.zeros(0)
        elapsed = time.monotonic() - self.started
        mean = float(returns.mean()) if returns.numel() else None
        self.rows.append({"frames": self.frames, "time_s": round(elapsed, 3), "return": mean})
        self.last = (self.frames >= self.steps and elapsed >= self.seconds) or elapsed >= self.cap * self.seconds

    def on_train_end(self, training_td, group: str) -> None:
        if self.last and group == list(self.experiment.group_map)[-1]:
            self.greedy = _greedy(self.experiment)  # the policy trained on this last batch
            raise BudgetsPassed


class BudgetsPassed(Exception):
    """Raised out of BenchMARL's loop (which has no other way to stop at a wall time) after the last iteration."""


def window(rows: list[dict], key: str, budget: float) -> float | None:
    """The mean return of the iterations in (0.9 budget, budget]; else of the last iteration within the budget (a
    BenchMARL iteration collects 6,000 frames, which can take longer than a tenth of the budget)."""
    within = [r for r in rows if r[key] <= budget and r["return"] is not None]
    values = [r["return"] for r in within if r[key] > 0.9 * budget] or [r["return"] for r in within[-1:]]
    return sum(values) / len(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", default="mappo", choices=sorted(ALGORITHMS))
    parser.add_argument("--task", default="pettingzoo", choices=["pettingzoo", "vmas"])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--cap", type=float, default=1.5, help="stop at CAP times the time budget (%(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", action="store_true", help="collect in subprocesses (parallel_collection)")
    parser.add_argument("--out", default="/tmp/benchmarl-runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.monotonic()
    if args.task == "pettingzoo":
        task = PettingZooTask.SIMPLE_SPREAD.get_from_yaml()
        task.config.update(max_cycles=25, N=3, local_ratio=0.5)
    else:
        task = VmasTask.SIMPLE_SPREAD.get_from_yaml()
        task.config.update(max_steps=25, n_agents=3)
    config = ExperimentConfig.get_from_yaml()
    config.sampling_device = config.train_device = config.buffer_device = "cpu"
    config.loggers, config.render, config.create_json = [], False, False
    config.evaluation = False  # greedy episodes after the last iteration instead (Budget)
    config.max_n_frames = 10**9  # the run ends when both budgets have passed (Budget)
    config.exploration_anneal_frames = args.steps // 3  # off-policy epsilon: over the first third of the step budget
    config.parallel_collection = args.parallel
    config.prefer_continuous_actions = False
    os.makedirs(args.out, exist_ok=True)
    config.save_folder = args.out
    budget = Budget(args.steps, args.seconds, args.cap, started)
    experiment = Experiment(
        task=task,
        algorithm_config=ALGORITHMS[args.algorithm].get_from_yaml(),
        model_config=MlpConfig.get_from_yaml(),
        critic_model_config=MlpConfig.get_from_yaml(),
        seed=args.seed,
        config=config,
        callbacks=[budget],
    )
    try:
        experiment.run()
    except BudgetsPassed:
        experiment.close()
    trained_s = time.monotonic() - started
    rewards = budget.greedy
    rows = budget.rows
    print(
        json.dumps(
            {
                "benchmarl": args.algorithm,
                "task": args.task,
                "steps": args.steps,
                "seconds": args.seconds,
                "return_at_steps": window(rows, "frames", args.steps) if budget.frames >= args.steps else None,
                "return_at_time": window(rows, "time_s", args.seconds),
                "frames_at_time": max((r["frames"] for r in rows if r["time_s"] <= args.seconds), default=0),
                "frames": rows[-1]["frames"],
                "trained_s": round(trained_s, 1),
                "greedy_eval": sum(rewards) / len(rewards) if rewards else None,
                "greedy_episodes": len(rewards),
                "load_before": load_before,
                "load_after": os.getloadavg(),
                "iterations": rows,
            }
        )
    )


def _greedy(experiment: Experiment, episodes: int = 100, length: int = 25) -> list[float]:
    """Team returns of greedy episodes of the trained policy in the experiment's test env (one episode per env and
    rollout of ``length`` steps, which is the episode's length)."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    returns: list[float] = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        while len(returns) < episodes:
            rollout = experiment.test_env.rollout(max_steps=length, policy=experiment.policy, auto_cast_to_device=True)
            total = sum(rollout.get(("next", g, "reward")).squeeze(-1).sum((-1, -2)) for g in experiment.group_map)
            returns += [float(x) for x in total.reshape(-1)]
    return returns[:episodes]


if __name__ == "__main__":
    main()
