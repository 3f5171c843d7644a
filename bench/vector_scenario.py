"""How much a vectorised scenario gains: K=256 copies stepped as arrays, against the per-copy form in a loop, and
the vectorised form served in batches of K through a server subprocess.

For each vectorised built-in (foraging_v0, cover_v0) one run prints, side by side:

- world-steps/s of the vectorised form in process (one ``step`` for K copies, then ``reset`` of finished copies:
  what a server does per batch), with CPU seconds per batch;
- world-steps/s of the per-copy form (the same scenario as K PettingZoo ParallelEnvs) stepped in a Python loop;
- world-steps/s served: one client (``agents.BatchedWorlds``) stepping K worlds that the server backs with one
  vectorised scenario, through ``python -m agora_marl.envserver`` on ipc://, layouts "stacked" and "agents";
- the ratios: vectorised / looped (the gain), and served / vectorised in process (target >= 0.6).

Random actions are drawn once (a pool of batches) so that sampling is not timed. Wall-clock figures on a shared
machine move with its load; compare the ratios of one run. usage: python bench/vector_scenario.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agora_marl.agents import BatchedWorlds
from agora_marl.envserver.process import ServerProcesses
from agora_marl.scenarios import make_env, make_vector

SCENARIOS = ("foraging_v0", "cover_v0")


def timed(step: Callable[[int], None], seconds: float, worlds_per_call: int) -> tuple[float, float]:
    """World-steps/s and CPU seconds per call of ``step(i)`` run for about ``seconds`` (after one warm-up call)."""
    step(0)
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        calls += 1
        step(calls)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return calls * worlds_per_call / elapsed, cpu / calls


def action_pool(name: str, k: int, batches: int = 16) -> list[dict[str, np.ndarray]]:
    """``batches`` batches of random actions ``{agent: (k,)}``."""
    env = make_env(name)
    rng = np.random.default_rng(0)
    return [{a: rng.integers(0, env.action_space(a).n, k) for a in env.possible_agents} for _ in range(batches)]


def vectorised(name: str, k: int, seconds: float) -> tuple[float, float]:
    vector = make_vector(name, k)
    vector.reset(seed=0)
    pool = action_pool(name, k)

    def step(i: int) -> None:
        _, _, terminated, truncated = vector.step(pool[i % len(pool)])
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            vector.reset(copies=done)

    return timed(step, seconds, k)


def looped(name: str, k: int, seconds: float) -> tuple[float, float]:
    envs = [make_env(name) for _ in range(k)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    pool = [[{a: int(x[a][j]) for a in x} for j in range(k)] for x in action_pool(name, k)]

    def step(i: int) -> None:
        actions = pool[i % len(pool)]
        for j, env in enumerate(envs):
            env.step(actions[j])
            if not env.agents:
                env.reset()

    return timed(step, seconds, k)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(address: str, pid: int, name: str, k: int, seconds: float, layout: str) -> tuple[float, float, float]:
    """World-steps/s, client CPU seconds per batch and server CPU seconds per batch."""
    pool = action_pool(name, k)
    with BatchedWorlds(address, name, num_worlds=k, seed=0, layout=layout) as worlds:
        worlds.reset()
        agents = worlds.possible_agents
        if layout == "stacked":
            pool = [np.stack([x[a] for a in agents], 1) for x in pool]
        calls = [0]

        def step(i: int) -> None:
            worlds.step(pool[i % len(pool)])
            calls[0] += 1

        server_cpu = process_cpu(pid)
        rate, client_cpu = timed(step, seconds, k)
        return rate, client_cpu, (process_cpu(pid) - server_cpu) / calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--worlds", type=int, default=256, help="K, copies per batch")
    args = parser.parse_args()
    k = args.worlds
    print(f"K={k} worlds per batch, {args.seconds:g} s per measurement; rates in world-steps/s, CPU in us per batch")
    header = ("vectorised", "its CPU", "per-copy loop", "served", "server CPU", "client CPU")
    print(" " * 29 + "  ".join(f"{h:>13}" for h in header))
    with ServerProcesses(count=1) as servers:
        for name in SCENARIOS:
            vec, vec_cpu = vectorised(name, k, args.seconds)
            loop, _ = looped(name, k, args.seconds)
            best = 0.0
            for layout in ("stacked", "agents"):
                rate, client_cpu, server_cpu = served(
                    servers.addresses[0], servers.pids[0], name, k, args.seconds, layout
                )
                best = max(best, rate)
                cells = (vec, vec_cpu * 1e6, loop, rate, server_cpu * 1e6, client_cpu * 1e6)
                print(f"{name + ' ' + layout:>27}  " + "  ".join(f"{c:>13,.0f}" for c in cells))
            print(
                f"{name}: vectorised / per-copy loop = {vec / loop:.1f}x; "
                f"served / vectorised in process = {best / vec:.2f} (target >= 0.6)"
            )


if __name__ == "__main__":
    main()
