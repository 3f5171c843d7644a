"""Mixed control's cost: K shared worlds stepped by two holders with act_batch, against one holder's step_batch.

    .venv/bin/python bench/partial_seats.py [--worlds 64] [--seconds 5] [--scenario mpe2.simple_spread_v3:parallel_env]

One server process; (a) one client holds every seat of K per-copy worlds and steps them with ``step_batch``; (b) two
client processes hold complementary seats of K other worlds and each sends one ``act_batch`` per tick. Both loops run
in the same run, alternated in slices, and the figure is the ratio of world-steps per second (issue 11's target:
>= 0.8). The server's CPU per world-step (every thread, bench/measure.py) is read from /proc for each phase.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from measure import process_cpu

from agora_marl.agents import AgentClient
from agora_marl.envserver.process import ServerProcesses

SPREAD = "mpe2.simple_spread_v3:parallel_env"


def _actions(spaces: dict, seats: list[str], k: int, rng: np.random.Generator) -> dict:
    return {a: np.stack([spaces[a].sample() for _ in range(k)]) for a in seats}


def _holder(address: str, worlds: list[int], seats: list[str], go, stop, counts) -> None:
    """A client process: join ``seats`` of every world, then one act_batch per tick while ``go`` is set."""
    rng = np.random.default_rng(0)
    with AgentClient(address, timeout_s=60.0) as client:
        client.hello(keep_alive_s=120.0)
        for world in worlds:
            client.join(world, seats=seats)
        spaces = client.spec(worlds[0]).action_spaces
        batch = _actions(spaces, seats, len(worlds), rng)
        ticks = 0
        while not stop.is_set():
            if not go.is_set():
                go.wait(0.05)
                continue
            client.act_batch(worlds, batch)
            ticks += 1
            counts.put(1)
        counts.put(("done", ticks))


def measure(args: argparse.Namespace) -> dict:
    k = args.worlds
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=["--log-level=WARNING"]) as servers:
        address, pid = servers.addresses[0], servers.pids[0]
        with AgentClient(address, timeout_s=60.0) as owner:
            owner.hello(keep_alive_s=300.0)
            whole = owner.create(args.scenario, seed=0, copies=k, join=True)
            # A per-copy batch for (a): mpe2 has no vectorised form, so these are K ParallelEnvs like (b)'s.
            shared = owner.create(args.scenario, seed=0, copies=k, wait_for_seats=True, deadline_ms=5000).worlds
            agents = whole.spec.possible_agents
            first, rest = agents[: len(agents) // 2 or 1], agents[len(agents) // 2 or 1 :]
            ctx = mp.get_context("spawn")
            go, stop, counts = ctx.Event(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_holder, args=(address, shared, s, go, stop, counts)) for s in (first, rest)]
            for proc in procs:
                proc.start()
            deadline = time.monotonic() + 60
            while any(s != "held" for w in owner.list_worlds() if w["world"] in shared for s in w["seats"].values()):
                assert time.monotonic() < deadline, "the holders never joined"
                time.sleep(0.1)
            rng = np.random.default_rng(0)
            batch = _actions(whole.spec.action_spaces, agents, k, rng)
            one = {"steps": 0, "seconds": 0.0, "cpu": 0.0}
            two = {"steps": 0, "seconds": 0.0, "cpu": 0.0}
            slice_s = args.seconds / args.rounds
            for _ in range(args.rounds):
                cpu, began = process_cpu(pid), time.perf_counter()
                while time.perf_counter() - began < slice_s:
                    owner.step_batch(whole.worlds, batch)
                    one["steps"] += k
                one["seconds"] += time.perf_counter() - began
                one["cpu"] += process_cpu(pid) - cpu

                ticks = 0
                cpu, began = process_cpu(pid), time.perf_counter()
                go.set()
                while time.perf_counter() - began < slice_s:
                    counts.get(timeout=30)
                    ticks += 1
                go.clear()
                elapsed = time.perf_counter() - began
                while not counts.empty():  # acts already sent when go cleared
                    counts.get_nowait()
                    ticks += 1
                two["seconds"] += elapsed
                two["cpu"] += process_cpu(pid) - cpu
                two["steps"] += ticks // 2 * k  # each world steps once both holders acted
            stop.set()
            go.set()
            for proc in procs:
                proc.join(30)
    rate_one = one["steps"] / one["seconds"]
    rate_two = two["steps"] / two["seconds"]
    return {
        "worlds": k,
        "scenario": args.scenario,
        "one_holder_world_steps_per_s": round(rate_one, 1),
        "two_holders_world_steps_per_s": round(rate_two, 1),
        "ratio_two_vs_one": round(rate_two / rate_one, 3),
        "server_cpu_us_per_world_step_one": round(one["cpu"] / one["steps"] * 1e6, 1),
        "server_cpu_us_per_world_step_two": round(two["cpu"] / max(two["steps"], 1) * 1e6, 1),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time of each phase, in all")
    parser.add_argument("--rounds", type=int, default=3, help="alternating slices of the two phases")
    parser.add_argument("--scenario", default=SPREAD)
    args = parser.parse_args()
    result = measure(args)
    print(f"{args.scenario}, K={args.worlds}, {result['cpus']} CPUs")
    print(
        f"  one holder, step_batch      {result['one_holder_world_steps_per_s']:>10,.0f} world-steps/s   "
        f"server CPU {result['server_cpu_us_per_world_step_one']:.0f} µs/world-step"
    )
    print(
        f"  two holders, act_batch      {result['two_holders_world_steps_per_s']:>10,.0f} world-steps/s   "
        f"server CPU {result['server_cpu_us_per_world_step_two']:.0f} µs/world-step"
    )
    print(f"  two / one                   {result['ratio_two_vs_one']:>10.2f}   (target >= 0.8)")
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
