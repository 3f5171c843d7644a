"""How fast the default learner (MAPPO on mpe2 simple_spread_v3, N=3) consumes environment steps, end to end.

One run prints, measured side by side on the same machine:

- the server's batched throughput alone: one client stepping K worlds with random actions (stacked layout, with the
  global state, as MAPPO asks for it), in world-steps/s;
- ``agora train`` at one rank with the same K worlds on one server of its own: env steps/s end to end (rollouts and
  updates), and during rollouts alone; the target is end to end / server alone >= 0.6;
- ``mpirun -n 2 agora train``: each rank with its own K worlds on its own server; the target is 2 ranks / 1 rank
  >= 1.6 on two cores.

The learner's figures come from its metrics.csv (steps over wall-clock time between the first and the last logged
update, so start-up is left out). Wall-clock figures on a shared machine move with its load; compare the ratios of one
run. usage: python bench/train_speed.py [--seconds 40] [--worlds 64] [--ranks 2] [--json FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agora_marl.agents import BatchedWorlds
from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import DEFAULT_SCENARIO, DEFAULT_SCENARIO_CONFIG
from agora_marl.learners.run import read_metrics


def server_alone(worlds: int, seconds: float) -> float:
    """World-steps/s of one client stepping ``worlds`` worlds of one server with random actions."""
    with (
        ServerProcesses(count=1) as servers,
        BatchedWorlds(
            servers.addresses, DEFAULT_SCENARIO, DEFAULT_SCENARIO_CONFIG, worlds, seed=0, layout="stacked", state=True
        ) as batch,
    ):
        rng = np.random.default_rng(0)
        batch.reset()
        actions = [rng.integers(0, 5, (worlds, 3)) for _ in range(64)]
        for i in range(20):  # warm up
            batch.step(actions[i % 64])
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch.step(actions[steps % 64])
            steps += 1
        return steps * worlds / (time.perf_counter() - start)


def learner(ranks: int, worlds: int, seconds: float, rate_guess: float, overrides: list[str]) -> dict[str, float]:
    """Env steps/s of ``agora train`` over about ``seconds``: end to end, and during rollouts only."""
    run_dir = Path(tempfile.mkdtemp(prefix="agora-bench-")) / "run"
    steps = int(rate_guess * seconds)
    command = [sys.executable, "-m", "agora_marl", "train", f"run.dir={run_dir}", f"env.num_worlds={worlds}"]
    command += [f"run.total_steps={steps}", "run.progress=false", "run.checkpoint_every=100000", *overrides]
    if ranks > 1:
        mpirun = shutil.which("mpirun") or str(Path(sys.executable).parent / "mpirun")
        command = [mpirun, "-n", str(ranks), *command]
    env = dict(os.environ)
    if ranks == 1:
        env["AGORA_MPI"] = "off"
    try:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=seconds * 6 + 120)
        rows = read_metrics(run_dir / "metrics.csv")
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    first, last = rows[min(2, len(rows) - 2)], rows[-1]  # skip the first updates: imports and warm-up
    span = float(last["time_s"]) - float(first["time_s"])
    later = rows[rows.index(first) + 1 :]
    rollout_s = sum(float(r["rollout_s"]) for r in later)
    steps_done = int(last["step"]) - int(first["step"])
    return {"steps_per_s": steps_done / span, "rollout_steps_per_s": steps_done / rollout_s, "updates": len(later)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each learner measurement")
    parser.add_argument("--worlds", type=int, default=64, help="worlds per rank (env.num_worlds)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the multi-rank measurement (0: skip it)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra agora train settings, e.g. ppo.epochs=10")
    args = parser.parse_args()

    alone = server_alone(args.worlds, min(args.seconds, 10.0))
    print(f"server alone, random actions, K={args.worlds}: {alone:,.0f} world-steps/s")
    one = learner(1, args.worlds, args.seconds, alone * 0.7, args.overrides)
    print(
        f"agora train, 1 rank, K={args.worlds}: {one['steps_per_s']:,.0f} steps/s end to end "
        f"({one['rollout_steps_per_s']:,.0f} during rollouts), {one['updates']} updates"
    )
    print(f"  end to end / server alone: {one['steps_per_s'] / alone:.2f} (target >= 0.6)")
    figures = {"worlds": args.worlds, "server_alone": alone, "rank1": one}
    if args.ranks > 1:
        many = learner(args.ranks, args.worlds, args.seconds, one["steps_per_s"] * args.ranks, args.overrides)
        scale = many["steps_per_s"] / one["steps_per_s"]
        print(
            f"mpirun -n {args.ranks} agora train, K={args.worlds} per rank: {many['steps_per_s']:,.0f} steps/s end to "
            f"end ({many['rollout_steps_per_s']:,.0f} during rollouts)"
        )
        print(f"  {args.ranks} ranks / 1 rank: {scale:.2f} (target >= 1.6 for 2 ranks on 2 cores)")
        figures |= {f"rank{args.ranks}": many, "scaling": scale}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
