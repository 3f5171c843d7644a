"""How fast the default learner (MAPPO on mpe2 simple_spread_v3, N=3) consumes environment steps, end to end.

One run prints, measured side by side on the same machine:

- rollouts that sample from a policy in this process, stepping the whole batch or two halves in flight
  (``BatchedWorlds.step_async``), alternated rollout by rollout: what pipelining wins;
- the server's batched throughput alone: one client stepping K worlds with random actions (stacked layout, with the
  global state, as MAPPO asks for it), in world-steps/s, measured again next to every learner measurement so that
  each ratio compares figures of the same minute;
- ``agora train`` at one rank with the same K worlds on one server of its own: env steps/s end to end (rollouts and
  updates), during rollouts alone, the share of the time spent in updates and the share in which no rollout ran
  (they differ with ``ppo.overlap``, whose updates run beside the next rollout); the target is end to end / server
  alone >= 0.85;
- each ``--variant`` (the same, with some settings changed: ``--variant 'serial=ppo.pipeline=1'``), against the
  default and against the server alone;
- ``mpirun -n 2 agora train``: each rank with its own K worlds on its own server, against one rank. On two cores
  this no longer doubles: one rank, its update beside its next rollout (``ppo.overlap``), keeps both busy already.

The learner's figures come from its metrics.csv (steps over wall-clock time between the first and the last logged
update, so start-up is left out); at one rank also the CPU time its process and its servers spent per 1,000 steps
over the same updates (from /proc), which a loaded machine moves less than wall-clock time. Wall-clock figures on a shared machine move with its load; compare the ratios of one
run. usage: python bench/train_speed.py [--seconds 40] [--worlds 64] [--ranks 2] [--rounds 20]
[--variant LABEL=K=V,K=V ...] [--json FILE] [key=value ...]
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


def pipelining(worlds: int, rounds: int, parts: int = 2) -> tuple[float, float]:
    """World-steps/s of rollouts that sample with a policy (the default actor, in this process) and step the worlds
    whole, and with ``parts`` parts in flight (``step_async``/``step_wait``), alternated rollout by rollout."""
    import torch

    from agora_marl.learners.algorithms.ppo import MAPPO, Settings

    torch.set_num_threads(1)
    with (
        ServerProcesses(count=1) as servers,
        BatchedWorlds(
            servers.addresses, DEFAULT_SCENARIO, DEFAULT_SCENARIO_CONFIG, worlds, seed=0, state=True
        ) as batch,
    ):
        policy = MAPPO().make_policy(batch.spec, batch.possible_agents, Settings())
        split = [slice(int(r[0]), int(r[-1]) + 1) for r in np.array_split(np.arange(worlds), parts)]
        obs = batch.reset().obs
        times = {1: 0.0, parts: 0.0}
        for i in range(2 * rounds + 2):
            mode = 1 if i % 2 else parts
            start = time.perf_counter()
            if mode == 1:
                for _ in range(25):
                    obs = batch.step(policy.act(obs, greedy=False)).obs
            else:
                part_obs = [{a: v[rows] for a, v in obs.items()} for rows in split]
                pending = [
                    batch.step_async(policy.act(o, greedy=False), rows) for o, rows in zip(part_obs, split, strict=True)
                ]
                for t in range(25):
                    for j, rows in enumerate(split):
                        part_obs[j] = batch.step_wait(pending[j]).obs
                        if t + 1 < 25:
                            pending[j] = batch.step_async(policy.act(part_obs[j], greedy=False), rows)
                obs = {a: np.concatenate([o[a] for o in part_obs]) for a in obs}
            if i >= 2:  # the first round of each is a warm-up
                times[mode] += time.perf_counter() - start
        return rounds * 25 * worlds / times[1], rounds * 25 * worlds / times[parts]


def learner(ranks: int, worlds: int, seconds: float, rate_guess: float, overrides: list[str]) -> dict[str, float]:
    """Env steps/s of ``agora train`` over about ``seconds``: end to end, and during rollouts only; the update share."""
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
    cpu: list[tuple[int, float, float]] = []  # (metrics rows, learner CPU s, servers CPU s) as rows appear
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + seconds * 6 + 120
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"agora train took longer than {seconds * 6 + 120:.0f} s")
            count = _rows(run_dir / "metrics.csv")
            if ranks == 1 and count >= 3 and (not cpu or cpu[-1][0] != count):
                servers = sum(_cpu_s(child) for child in _descendants(process.pid))
                cpu.append((count, _cpu_s(process.pid), servers))
            time.sleep(0.05)
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
        rows = read_metrics(run_dir / "metrics.csv")
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    first, last = rows[min(2, len(rows) - 2)], rows[-1]  # skip the first updates: imports and warm-up
    span = float(last["time_s"]) - float(first["time_s"])
    later = rows[rows.index(first) + 1 :]
    rollout_s = sum(float(r["rollout_s"]) for r in later)
    learn_s = sum(float(r["learn_s"]) for r in later)
    steps_done = int(last["step"]) - int(first["step"])
    figures = {
        "steps_per_s": steps_done / span,
        "rollout_steps_per_s": steps_done / rollout_s,
        "update_share": learn_s / span,
        "waiting_share": max(0.0, 1.0 - rollout_s / span),
        "updates": len(later),
    }
    if len(cpu) >= 2:  # CPU per 1,000 env steps, between the first and the last update seen: load moves it less
        (rows_a, learner_a, servers_a), (rows_b, learner_b, servers_b) = cpu[0], cpu[-1]
        done = int(rows[rows_b - 1]["step"]) - int(rows[rows_a - 1]["step"])
        figures["learner_cpu_ms_per_1k"] = (learner_b - learner_a) * 1e6 / done
        figures["servers_cpu_ms_per_1k"] = (servers_b - servers_a) * 1e6 / done
    return figures


def _rows(path: Path) -> int:
    """Rows of a metrics.csv written so far (0 before it exists)."""
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Every live descendant of a process (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def _describe(label: str, figures: dict[str, float], alone: float) -> str:
    return (
        f"{label}: {figures['steps_per_s']:,.0f} steps/s end to end ({figures['rollout_steps_per_s']:,.0f} during "
        f"rollouts; updates {figures['update_share']:.0%} of the time, rollouts waiting for them "
        f"{figures['waiting_share']:.0%}), {figures['updates']} updates; "
        f"/ server alone ({alone:,.0f}): {figures['steps_per_s'] / alone:.2f}"
    ) + (
        f"; CPU per 1,000 steps: learner {figures['learner_cpu_ms_per_1k']:.0f} ms, "
        f"servers {figures['servers_cpu_ms_per_1k']:.0f} ms"
        if "learner_cpu_ms_per_1k" in figures
        else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each learner measurement")
    parser.add_argument("--worlds", type=int, default=64, help="worlds per rank (env.num_worlds)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the multi-rank measurement (0: skip it)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=K=V,K=V",
        help="also measure one rank with these settings changed (repeatable), e.g. 'serial=ppo.pipeline=1'",
    )
    parser.add_argument("--rounds", type=int, default=20, help="rollouts of each kind in the pipelining measurement")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra agora train settings for every run, e.g. ppo.epochs=10")
    args = parser.parse_args()
    alone_s = min(args.seconds, 10.0) / 2

    whole, piped = pipelining(args.worlds, rounds=args.rounds)
    print(
        f"rollouts with a policy, K={args.worlds}, alternated: {whole:,.0f} world-steps/s stepping the whole batch, "
        f"{piped:,.0f} with two halves in flight; pipelined / whole: {piped / whole:.2f}"
    )
    alone = server_alone(args.worlds, alone_s)
    one = learner(1, args.worlds, args.seconds, alone * 0.8, args.overrides)
    alone = (alone + server_alone(args.worlds, alone_s)) / 2  # before and after: the same minute as the learner's
    print(f"server alone, random actions, K={args.worlds}: {alone:,.0f} world-steps/s")
    print(_describe(f"agora train, 1 rank, K={args.worlds}", one, alone) + " (target >= 0.85)")
    one["server_alone"] = alone
    figures: dict = {"worlds": args.worlds, "rank1": one, "rollout_whole": whole, "rollout_pipelined": piped}
    for variant in args.variant:
        label, _, settings = variant.partition("=")
        overrides = [*args.overrides, *(s for s in settings.split(",") if s)]
        before = server_alone(args.worlds, alone_s)
        other = learner(1, args.worlds, args.seconds, one["steps_per_s"], overrides)
        other["server_alone"] = (before + server_alone(args.worlds, alone_s)) / 2
        ratio = other["steps_per_s"] / other["server_alone"] / (one["steps_per_s"] / one["server_alone"])
        print(_describe(f"  {label} ({' '.join(overrides)})", other, other["server_alone"]))
        print(f"    {label} / default, each against its own server-alone figure: {ratio:.2f}")
        figures[label] = other
    if args.ranks > 1:
        many = learner(args.ranks, args.worlds, args.seconds, one["steps_per_s"] * args.ranks, args.overrides)
        scale = many["steps_per_s"] / one["steps_per_s"]
        print(_describe(f"mpirun -n {args.ranks} agora train, K={args.worlds} per rank", many, alone))
        print(f"  {args.ranks} ranks / 1 rank: {scale:.2f} (with more cores than one rank keeps busy)")
        figures |= {f"rank{args.ranks}": many, "scaling": scale}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
