"""Learning in shared worlds (issue 10's learning table): predators trained against a scripted prey held by another
process (MAPPO and IPPO), and two ``agora train`` processes co-training the two teams of the same worlds.

    .venv/bin/python bench/shared_learning.py --steps 100000 --co-steps 100000

Part 1 runs ``agora train env.seats=predator_* env.opponent=scripted`` per algorithm and prints the predators' team
return over training next to random predators against the same prey. Part 2 starts a server, a MAPPO predator
learner that names its worlds (``env.group``, ``env.opponent=external``) and an IPPO prey learner that joins them
(``env.join``); then it plays checkpoints against each other in process: each side's last policy against the other
side's first (frozen, early) snapshot, next to its own first snapshot against it. Figures, not assertions: the CI
tests (tests/test_learners_shared_worlds.py, tests/test_learners_co_training.py) assert what must hold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agora_marl.agents.policies import named_policy
from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.run import read_metrics
from agora_marl.learners.trained import load_trained_policy
from agora_marl.scenarios import make_env

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "predator_prey_v0"
COMMON = [
    "run.progress=false",
    f"env.scenario={SCENARIO}",
    "env.num_worlds=16",
    "ppo.rollout_steps=60",
    "ppo.epochs=5",
    "run.checkpoint_every=5",
    "run.keep_checkpoints=1000",
]


def _train(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "AGORA_MPI": "off"}
    command = [sys.executable, "-m", "agora_marl", "train", *COMMON, *overrides]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _curve(run_dir: Path, marks: int = 5) -> list[tuple[int, float]]:
    """(step, mean return of the updates around it) at ``marks`` evenly spaced points."""
    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r.get("return")]
    points = np.linspace(0, len(rows) - 1, marks).round().astype(int)
    window = max(1, len(rows) // (2 * marks))
    return [
        (int(rows[i]["step"]), float(np.mean([float(r["return"]) for r in rows[max(0, i - window) : i + 1]])))
        for i in points
    ]


def _policy_for(spec: str, side: str, env) -> dict:
    """Per agent of ``side`` (``predator`` or ``prey``): a callable batch-free policy, from a checkpoint or a name."""
    agents = [a for a in env.possible_agents if a.startswith(side)]
    if spec.endswith(".pt"):
        policy = load_trained_policy(Path(spec).parent.parent, spec)
        return {a: (lambda obs, a=a: policy.act({a: np.asarray(obs)[None]}, True)[a][0]) for a in agents}
    return {a: named_policy(spec, env.observation_space(a), env.action_space(a), agent=a) for a in agents}


def predator_return(predators: str, prey: str, episodes: int = 200) -> tuple[float, float]:
    """The predators' mean team return and the catch rate over ``episodes`` seeded episodes, in process."""
    env = make_env(SCENARIO, {})
    policies = {**_policy_for(predators, "predator", env), **_policy_for(prey, "prey", env)}
    returns, caught = [], 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        total = 0.0
        while env.agents:
            obs, rewards, terminated, *_ = env.step({a: policies[a](obs[a]) for a in env.agents})
            total += sum(r for a, r in rewards.items() if a.startswith("predator"))
            caught += bool(terminated.get("prey_0"))
        returns.append(total)
    return float(np.mean(returns)), caught / episodes


def part_one(steps: int, out: Path) -> None:
    random_return, random_caught = predator_return("random", "scripted")
    print(f"\n## Predators vs the scripted prey ({steps:,} steps, 16 worlds, the prey in another process)\n")
    print(f"random predators: team return {random_return:.2f}, prey caught {random_caught:.0%}\n")
    print("| algo | " + " | ".join(["step: return"] * 5) + " | greedy eval (return, caught) | wall s |")
    print("| --- |" + " --- |" * 7)
    for algo in ("mappo", "ippo"):
        run_dir = out / f"{algo}-vs-scripted"
        started = time.monotonic()
        process = _train(
            f"algo={algo}",
            "env.seats=predator_*",
            "env.opponent=scripted",
            f"run.total_steps={steps}",
            f"run.dir={run_dir}",
        )
        log, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{algo} failed:\n{log}")
        wall = time.monotonic() - started
        last = sorted((run_dir / "checkpoints").iterdir())[-1]
        trained, caught = predator_return(str(last), "scripted")
        cells = " | ".join(f"{s:,}: {r:.2f}" for s, r in _curve(run_dir))
        print(f"| {algo} | {cells} | {trained:.2f}, {caught:.0%} | {wall:.0f} |", flush=True)


def part_two(steps: int, out: Path) -> None:
    print(f"\n## Two learners co-training ({steps:,} steps each): MAPPO predators vs IPPO prey, one server\n")
    with ServerProcesses(count=1) as servers:
        address = servers.addresses[0]
        started = time.monotonic()
        predators = _train(
            "algo=mappo",
            f"env.connect={address}",
            "env.seats=predator_*",
            "env.opponent=external",
            "env.group=bench",
            f"run.total_steps={steps}",
            f"run.dir={out / 'co-predators'}",
        )
        time.sleep(3.0)
        prey = _train(
            "algo=ippo",
            f"env.connect={address}",
            "env.seats=prey_*",
            "env.join=bench",
            f"run.total_steps={steps}",
            f"run.dir={out / 'co-prey'}",
        )
        for name, process in (("prey", prey), ("predators", predators)):
            log, _ = process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"the {name} learner failed:\n{log}")
        wall = time.monotonic() - started
    print(f"both done in {wall:.0f} s\n")
    for side in ("co-predators", "co-prey"):
        rows = read_metrics(out / side / "metrics.csv")
        late = np.mean([float(r["opponent_late"]) for r in rows if r.get("opponent_late")])
        cells = ", ".join(f"{s:,}: {r:.2f}" for s, r in _curve(out / side))
        print(f"- {side}: return {cells} (opponent_late {late:.3f})")
    first = {side: sorted((out / side / "checkpoints").iterdir())[0] for side in ("co-predators", "co-prey")}
    last = {side: sorted((out / side / "checkpoints").iterdir())[-1] for side in ("co-predators", "co-prey")}
    print("\n| predators | prey | predators' team return | prey caught |")
    print("| --- | --- | --- | --- |")
    for pred, prey_ in (("first", "first"), ("last", "first"), ("first", "last"), ("last", "last")):
        pick = {"first": first, "last": last}
        value, caught = predator_return(str(pick[pred]["co-predators"]), str(pick[prey_]["co-prey"]))
        print(
            f"| {pred} ({pick[pred]['co-predators'].stem}) | {prey_} ({pick[prey_]['co-prey'].stem}) | {value:.2f} | {caught:.0%} |"
        )
    print(
        "\nEach side beats the other's frozen first snapshot more than its own first snapshot did when the predators' "
        "return rises from (first, first) to (last, first) and falls from (first, first) to (first, last)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="part 1: steps per algorithm (0: skip)")
    parser.add_argument("--co-steps", type=int, default=100_000, help="part 2: steps per learner (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.steps:
            part_one(args.steps, out)
        if args.co_steps:
            part_two(args.co_steps, out)


if __name__ == "__main__":
    main()
