"""How much a vectorised scenario gains: K=256 copies stepped as arrays, against the per-copy form in a loop, and
the vectorised form served in batches of K through a server subprocess.

For each vectorised built-in (foraging_v0, cover_v0), or each ``--scenario NAME`` (your own, registered by
``--module FILE.py`` as in ``agora scenarios check``), one run prints, side by side:

- world-steps/s of the vectorised form in process (one ``step`` for K copies, then ``reset`` of finished copies:
  what a server does per batch), with CPU per batch;
- world-steps/s of the per-copy form (the same scenario as K PettingZoo ParallelEnvs) stepped in a Python loop;
- world-steps/s served: one client (``agents.BatchedWorlds``) stepping K worlds that the server backs with one
  vectorised scenario, through ``python -m agora_marl.envserver``, layouts "stacked" and "agents" (one batch in
  flight: client and server wait for each other), and two groups of K both in flight (the server never idle);
  the client's and the server's CPU per batch (the server's from /proc, every thread);
- the ratios: vectorised / looped (the gain), and served / vectorised in process (issue 11's target: >= 0.75).

The in-process and served measurements alternate in slices, so that a change of the machine's load hits them all.
Random actions are drawn once (a pool of batches) so that sampling is not timed. Compare the ratios of one run.

usage: python bench/vector_scenario.py [--seconds 3] [--rounds 4] [--scenario NAME ...] [--module FILE.py ...]
       [--config K=V ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable

import numpy as np
from measure import process_cpu

from agora_marl.agents import AgentClient, BatchedWorlds
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


class Vectorised:
    """The vectorised form in process: one ``step`` for K copies, then ``reset`` of the finished ones (what a server
    does per batch), measured over one or more slices."""

    def __init__(self, name: str, config: dict, k: int) -> None:
        self.vector = make_vector(name, k, config)
        self.vector.reset(seed=0)
        self.pool = action_pool(name, config, k)
        self.calls, self.wall, self.cpu = 0, 0.0, 0.0
        self.step(0)

    def step(self, i: int) -> None:
        _, _, terminated, truncated = self.vector.step(self.pool[i % len(self.pool)])
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            self.vector.reset(copies=done)

    def run(self, seconds: float) -> None:
        calls, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            self.step(self.calls + calls)
            calls += 1
        self.calls += calls
        self.wall += time.perf_counter() - started
        self.cpu += time.process_time() - cpu


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


class Served:
    """One client stepping K worlds that the server backs with one vectorised scenario (``BatchedWorlds``, one batch
    in flight: each waits for the other's work), measured over one or more slices."""

    def __init__(self, address: str, pid: int, name: str, config: dict, k: int, layout: str) -> None:
        self.pool = action_pool(name, config, k)
        self.worlds = BatchedWorlds(address, name, config, num_worlds=k, seed=0, layout=layout)
        self.worlds.reset()
        if layout == "stacked":
            self.pool = [np.stack([x[a] for a in self.worlds.possible_agents], 1) for x in self.pool]
        self.pid, self.calls, self.wall, self.cpu, self.server_cpu = pid, 0, 0.0, 0.0, 0.0
        self.step(0)

    def step(self, i: int) -> None:
        self.worlds.step(self.pool[i % len(self.pool)])

    def run(self, seconds: float) -> None:
        calls, started, cpu, server_cpu = 0, time.perf_counter(), time.process_time(), process_cpu(self.pid)
        while time.perf_counter() - started < seconds:
            self.step(self.calls + calls)
            calls += 1
        self.calls += calls
        self.wall += time.perf_counter() - started
        self.cpu += time.process_time() - cpu
        self.server_cpu += process_cpu(self.pid) - server_cpu

    def close(self) -> None:
        self.worlds.close()


class Pipelined(Served):
    """Two groups of K worlds, both always in flight: the server steps one batch while the client reads the other's
    reply and sends its next step, so that the server is never idle (a learner keeping two parts in flight)."""

    def __init__(self, address: str, pid: int, name: str, config: dict, k: int, layout: str) -> None:
        self.client = AgentClient(address, timeout_s=60.0)
        self.groups = [self.client.create(name, config, seed=s, copies=k, join=True).worlds for s in (0, k)]
        agents = self.client.spec(self.groups[0][0]).possible_agents
        self.pool = [np.stack([x[a] for a in agents], 1) for x in action_pool(name, config, k)]
        self.layout = layout
        for worlds in self.groups:
            self.client.reset_batch(worlds, seed=0, layout=layout)
        self.pid, self.calls, self.wall, self.cpu, self.server_cpu = pid, 0, 0.0, 0.0, 0.0
        self.pending = [self._send(g, g) for g in range(2)]

    def _send(self, g: int, i: int) -> int:
        actions = self.pool[i % len(self.pool)]
        return self.client.send("step_batch", worlds=self.groups[g], actions=actions, layout=self.layout)

    def step(self, i: int) -> None:
        g = i % 2
        reply = self.client.reply(self.pending[g])
        assert reply["op"] == "batch", reply
        self.pending[g] = self._send(g, i)

    def close(self) -> None:
        for request in self.pending:
            self.client.reply(request)
        for worlds in self.groups:
            for world in worlds:
                self.client.close_world(world)
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--worlds", type=int, default=256, help="K, copies per batch")
    parser.add_argument("--rounds", type=int, default=4, help="alternated slices of each measurement")
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
    print(
        f"K={k} worlds per batch, {args.seconds:g} s per measurement in {args.rounds} alternated slices; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; rates in world-steps/s, CPU in µs per batch"
    )
    print(" " * 44 + "  ".join(f"{h:>13}" for h in ("world-steps/s", "client CPU", "server CPU", "/ in process")))
    results = {}
    with ServerProcesses(count=1, server_args=server_args) as servers:
        address, pid = servers.addresses[0], servers.pids[0]
        for name in names:
            loop, _ = looped(name, config, k, args.seconds / 2)
            local = Vectorised(name, config, k)
            phases: dict[str, Served] = {}
            for layout in ("stacked", "agents"):
                try:
                    phases[f"served {layout}"] = Served(address, pid, name, config, k, layout)
                except ValueError as exc:  # "stacked" needs every agent to share its spaces
                    print(f"{name + ' served ' + layout:>42}  skipped: {exc}")
            if "served stacked" in phases:
                phases["served stacked, 2 in flight"] = Pipelined(address, pid, name, config, k, "stacked")
            # The in-process form and each served form alternate in slices: a change of load hits them all alike.
            for _ in range(args.rounds):
                local.run(args.seconds / args.rounds)
                for phase in phases.values():
                    phase.run(args.seconds / args.rounds)
            vec = local.calls * k / local.wall
            figures: dict = {"vectorised": vec, "vectorised_cpu_us": local.cpu / local.calls * 1e6, "looped": loop}
            print(f"{name + ' vectorised in process':>42}  {vec:>13,.0f}  {figures['vectorised_cpu_us']:>13,.0f}")
            print(f"{name + ' per-copy loop in process':>42}  {loop:>13,.0f}")
            for label, phase in phases.items():
                rate = phase.calls * k / phase.wall
                client_cpu, server_cpu = phase.cpu / phase.calls * 1e6, phase.server_cpu / phase.calls * 1e6
                print(
                    f"{name + ' ' + label:>42}  {rate:>13,.0f}  {client_cpu:>13,.0f}  {server_cpu:>13,.0f}  "
                    f"{rate / vec:>13.2f}"
                )
                figures[label] = {"rate": rate, "client_cpu_us": client_cpu, "server_cpu_us": server_cpu}
                phase.close()
            one = max(figures[p]["rate"] for p in ("served stacked", "served agents") if p in figures) / vec
            two = figures["served stacked, 2 in flight"]["rate"] / vec if "served stacked" in phases else float("nan")
            print(
                f"{name}: vectorised / per-copy loop = {vec / loop:.1f}x; served / vectorised in process = {one:.2f} "
                f"(one batch in flight), {two:.2f} (two in flight); target >= 0.75"
            )
            results[name] = figures
    print(json.dumps(results))


if __name__ == "__main__":
    main()
