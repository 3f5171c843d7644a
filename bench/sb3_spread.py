"""docs/libraries.md's Stable-Baselines3 recipe (examples/sb3_spread.py) measured through agora, against itself in
process and against torch's thread settings.

Two measurements, each run as the example's own command line against a server of its own (``agora serve`` in a
process, as a user runs it):

- ``threads``: the same short training through agora under torch's default threads (one per core), the default with
  ``OMP_WAIT_POLICY=PASSIVE``, one torch thread (the recipe's default), and both, alternated round by round, so that each
  ratio compares runs of the same minutes. On a busy machine torch's idle OpenMP threads spin for the cores that the
  server needs;
- ``learn``: the recipe's full budget per seed, through agora and in process: the model's team return against random
  play (100 episodes each, the same seeds), the wall time of each, and whether both trained the same model;
- ``seat``: docs/libraries.md's ``SeatEnv`` example (PPO on four CartPole worlds, SB3's defaults), then the model's
  return over 20 episodes.

usage: python bench/sb3_spread.py threads [--timesteps 30000] [--rounds 3]
       python bench/sb3_spread.py learn [--timesteps 400000] [--seeds 0 1]
       python bench/sb3_spread.py seat [--timesteps 100000]
Wall-clock figures move with the machine's load (printed with each run): compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from agora_marl.agents import SeatEnv
from agora_marl.envserver.process import ServerProcesses

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sb3_spread.py"

#: name -> (the example's --threads, extra environment)
THREAD_VARIANTS = {
    "torch default": (0, {}),
    "OMP_WAIT_POLICY=PASSIVE": (0, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "torch.set_num_threads(1)": (1, {}),
    "both": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def run_example(args: list[str], extra_env: dict[str, str], timeout_s: float) -> dict[str, float]:
    """Run the example; returns its training seconds and, where it evaluated, the model's and random's returns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), *args, "--save", f"{tmp}/model"],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the example failed:\n{done.stderr[-3000:]}")
    out = {"seconds": float(re.search(r"agent-steps in ([\d.]+) s", done.stdout).group(1))}
    for name in ("model", "random"):
        found = re.search(rf"{name}: team return (-?[\d.]+) ± ([\d.]+)", done.stdout)
        if found:
            out[name], out[f"{name}_std"] = float(found.group(1)), float(found.group(2))
    return out


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def threads(timesteps: int, rounds: int) -> None:
    seconds: dict[str, list[float]] = {name: [] for name in THREAD_VARIANTS}
    names = list(THREAD_VARIANTS)
    with ServerProcesses(count=1) as servers:
        address = servers.addresses[0]
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # a new order each round
                count, extra = THREAD_VARIANTS[name]
                args = [address, "--timesteps", str(timesteps), "--episodes", "0", "--threads", str(count)]
                seconds[name].append(run_example(args, extra, timeout_s=3600)["seconds"])
                print(f"round {round_} {name}: {seconds[name][-1]:.1f} s (load {load()})", flush=True)
    base = statistics.median(seconds["torch default"])
    print(f"\n{timesteps} agent-steps through agora, median of {rounds} rounds:")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:28s} {median:7.1f} s   {base / median:5.2f}x the torch default's speed")


def learn(timesteps: int, seeds: list[int]) -> None:
    with ServerProcesses(count=1) as servers:
        for seed in seeds:
            common = ["--timesteps", str(timesteps), "--seed", str(seed), "--episodes", "100"]
            served = run_example([servers.addresses[0], *common], {}, timeout_s=7200)
            print(f"seed {seed} through agora: {served} (load {load()})", flush=True)
            local = run_example(["--in-process", *common], {}, timeout_s=7200)
            print(f"seed {seed} in process:    {local} (load {load()})", flush=True)
            same = served["model"] == local["model"] and served["model_std"] == local["model_std"]
            print(
                f"seed {seed}: model {served['model']:.1f} ± {served['model_std']:.1f} vs random "
                f"{served['random']:.1f} ± {served['random_std']:.1f} (100 episodes); the same model in process: "
                f"{same}; through agora at {local['seconds'] / served['seconds']:.2f}x the in-process speed"
            )


def seat(timesteps: int) -> None:
    torch.set_num_threads(1)
    with ServerProcesses(count=1) as servers:
        address = servers.addresses[0]
        env = make_vec_env(lambda: SeatEnv(address, scenario="gymnasium:CartPole-v1"), n_envs=4, seed=0)
        start = time.perf_counter()
        model = PPO("MlpPolicy", env, seed=0)
        model.learn(total_timesteps=timesteps)
        seconds = time.perf_counter() - start
        env.close()
        played = SeatEnv(address, scenario="gymnasium:CartPole-v1", seed=100)
        mean, std = evaluate_policy(model, played, n_eval_episodes=20)
        played.close()
    print(
        f"CartPole through SeatEnv: {model.num_timesteps} steps in {seconds:.0f} s; return {mean:.1f} ± {std:.1f} "
        f"over 20 episodes (load {load()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["threads", "learn", "seat"])
    parser.add_argument(
        "--timesteps", type=int, help="agent-steps per run (threads: 30,000; learn: 400,000; seat: 100,000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="threads: rounds of the four settings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="learn: the seeds to train")
    args = parser.parse_args()
    if args.what == "threads":
        threads(args.timesteps or 30_000, args.rounds)
    elif args.what == "learn":
        learn(args.timesteps or 400_000, args.seeds)
    else:
        seat(args.timesteps or 100_000)


if __name__ == "__main__":
    main()
