"""How much a vectorised scenario gains: K=256 copies stepped as arrays, against the per-copy form in a loop, and
the vectorised form served in batches of K through a server subprocess.

For each vectorised built-in (foraging_v0, cover_v0), or each ``--scenario NAME`` (your own, registered by
``--module FILE.py`` as in ``agora scenarios check``), one run prints, side by side:

- world-steps/s of the vectorised form in process (one ``step`` for K copies, then ``reset`` of finished copies:
  what a server does per batch), with CPU seconds per batch;
- world-steps/s of the per-copy form (the same scenario as K PettingZoo ParallelEnvs) stepped in a Python loop;
- world-steps/s served: one client (``agents.BatchedWorlds``) stepping K worlds that the server backs with one
  vectorised scenario, through ``python -m agora_marl.envserver`` on ipc://, layouts "stacked" and "agents";
- the ratios: vectorised / looped (the gain), and served / vectorised in process (target >= 0.6).

Random actions are drawn once (a pool of batches) so that sampling is not timed. Wall-clock figures on a shared
machine move with its load; compare the ratios of one run.

usage: python bench/vector_scenario.py [--seconds 3] [--scenario NAME ...] [--module FILE.py ...] [--config K=V ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agora_marl.agents import BatchedWorlds
from agora_marl.envserver.process import ServerProcesses
from agora_marl.scenarios import make_env, make_vector
from agora_marl.scenarios.registry import load_scenario_module

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


def action_pool(name: str, config: dict, k: int, batches: int = 16) -> list[dict[str, np.ndarray]]:
    """``batches`` batches of random actions ``{agent: (k, *action_shape)}`` (any action space: Discrete, Box...)."""
    env = make_env(name, config)
    samplers = {}
    for i, agent in enumerate(env.possible_agents):
        samplers[agent] = copy.deepcopy(env.action_space(agent))
        samplers[agent].seed(i)
    env.close()
    return [{a: np.stack([space.sample() for _ in range(k)]) for a, space in samplers.items()} for _ in range(batches)]


def vectorised(name: str, config: dict, k: int, seconds: float) -> tuple[float, float]:
    vector = make_vector(name, k, config)
    vector.reset(seed=0)
    pool = action_pool(name, config, k)

    def step(i: int) -> None:
        _, _, terminated, truncated = vector.step(pool[i % len(pool)])
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            vector.reset(copies=done)

    return timed(step, seconds, k)


def looped(name: str, config: dict, k: int, seconds: float) -> tuple[float, float]:
    envs = [make_env(name, config) for _ in range(k)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    pool = [[{a: x[a][j] for a in x} for j in range(k)] for x in action_pool(name, config, k)]

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


def served(
    address: str, pid: int, name: str, config: dict, k: int, seconds: float, layout: str
) -> tuple[float, float, float]:
    """World-steps/s, client CPU seconds per batch and server CPU seconds per batch."""
    pool = action_pool(name, config, k)
    with BatchedWorlds(address, name, config, num_worlds=k, seed=0, layout=layout) as worlds:
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
    parser.add_argument(
        "--scenario",
        action="append",
        dest="scenarios",
        metavar="NAME",
        help=f"a vectorised scenario to measure (repeatable; default {', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE|FILE.py",
        help="import your scenarios' module (or file) first, here and in the server, so that they register",
    )
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="scenario config (value as JSON)"
    )
    args = parser.parse_args()
    k = args.worlds
    for module in args.module:
        load_scenario_module(module)
    config = {}
    for value in args.config:
        key, _, raw = value.partition("=")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    names = args.scenarios or list(SCENARIOS)
    for name in names:
        if make_vector(name, 1, config) is None:
            parser.error(f"{name} has no vectorised form (register it with vector_factory=...): nothing to compare")
    # The server process imports the same files: a path relative to here must still name them there.
    server_args = [
        f for m in args.module for f in ("--scenario-module", os.path.abspath(m) if m.endswith(".py") else m)
    ]
    print(f"K={k} worlds per batch, {args.seconds:g} s per measurement; rates in world-steps/s, CPU in us per batch")
    header = ("vectorised", "its CPU", "per-copy loop", "served", "server CPU", "client CPU")
    print(" " * 29 + "  ".join(f"{h:>13}" for h in header))
    with ServerProcesses(count=1, server_args=server_args) as servers:
        for name in names:
            vec, vec_cpu = vectorised(name, config, k, args.seconds)
            loop, _ = looped(name, config, k, args.seconds)
            best = 0.0
            for layout in ("stacked", "agents"):
                try:
                    rate, client_cpu, server_cpu = served(
                        servers.addresses[0], servers.pids[0], name, config, k, args.seconds, layout
                    )
                except ValueError as exc:  # "stacked" needs every agent to share its spaces
                    print(f"{name + ' ' + layout:>27}  skipped: {exc}")
                    continue
                best = max(best, rate)
                cells = (vec, vec_cpu * 1e6, loop, rate, server_cpu * 1e6, client_cpu * 1e6)
                print(f"{name + ' ' + layout:>27}  " + "  ".join(f"{c:>13,.0f}" for c in cells))
            print(
                f"{name}: vectorised / per-copy loop = {vec / loop:.1f}x; "
                f"served / vectorised in process = {best / vec:.2f} (target >= 0.6)"
            )


if __name__ == "__main__":
    main()
