"""How the server's cost grows: with the worlds per batch, with the client connections in lockstep, and in memory.

One run of one server process prints three tables (docs/performance.md, "How cost grows"):

- batched: served world-steps/s and the server's CPU per world-step for K = 1, 16, 64, 256, 1024 worlds per
  ``step_batch`` (one client, ``BatchedWorlds``, stacked layout, one batch in flight), for mpe2 simple_spread_v3
  (K ParallelEnvs) and foraging_v0 (one vectorised scenario for the K copies), each against the scenario stepped in
  process (simple_spread: one env again and again; foraging: the vectorised form at the same K);
- lockstep: C = 1, 8, 64, 256 client connections, each holding one seat of a 2-seat foraging_v0 world (C=1: one
  connection holding both seats of one world), every connection acting once per tick (``send_act`` on all, then
  ``recv`` on all, from this one process): ticks/s, the tick's p50/p99 (first send to last reply), the server's CPU
  per tick and per act beyond the worlds' own steps;
- memory, measured first in the fresh server: its resident memory per connection (256 that said hello), per
  per-copy world (1,024 foraging_v0 worlds: mostly the server's own bookkeeping; 256 simple_spread worlds: mostly
  mpe2's env) and per vectorised copy (a 4,096-copy foraging_v0 group).

CPU times are every server thread's, from /proc (bench/measure.py). On a shared machine compare within a run.
usage: python bench/scaling.py [--seconds 3] [--batches 1,16,64,256,1024] [--connections 1,8,64,256]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from measure import process_cpu, rss_bytes

from agora_marl.agents import AgentClient, BatchedWorlds
from agora_marl.envserver.process import ServerProcesses
from agora_marl.scenarios import make_env, make_vector

SPREAD = "mpe2.simple_spread_v3:parallel_env"
FORAGING = "foraging_v0"
CONFIGS = {SPREAD: {"N": 3}, FORAGING: {}}


def in_process(name: str, k: int, seconds: float) -> float:
    """CPU µs per world-step of the scenario in process: simple_spread one env stepped again and again, foraging its
    vectorised form at K copies (one ``step`` and the finished copies' ``reset`` per call)."""
    rng = np.random.default_rng(0)
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    if name == FORAGING:
        vector = make_vector(name, k, CONFIGS[name])
        vector.reset(seed=0)
        pool = [{a: rng.integers(6, size=k) for a in vector.possible_agents} for _ in range(16)]
        while time.perf_counter() - started < seconds:
            _, _, terminated, truncated = vector.step(pool[calls % 16])
            done = np.flatnonzero((terminated | truncated).any(1))
            if done.size:
                vector.reset(copies=done)
            calls += 1
        return (time.process_time() - cpu) / (calls * k) * 1e6
    env = make_env(name, CONFIGS[name])
    env.reset(seed=0)
    actions = rng.integers(5, size=(1024, 3)).tolist()
    while time.perf_counter() - started < seconds:
        row = actions[calls % 1024]
        env.step({a: row[i] for i, a in enumerate(env.agents)})
        if not env.agents:
            env.reset()
        calls += 1
    return (time.process_time() - cpu) / calls * 1e6


def batched(address: str, pid: int, name: str, k: int, seconds: float) -> dict:
    """Served world-steps/s and server CPU µs per world-step for one client stepping K worlds per message."""
    with BatchedWorlds(address, name, CONFIGS[name], num_worlds=k, seed=0, layout="stacked") as worlds:
        worlds.reset()
        n_actions = worlds.action_spaces[worlds.possible_agents[0]].n
        pool = np.random.default_rng(0).integers(n_actions, size=(16, k, len(worlds.possible_agents)))
        for i in range(3):  # warm up
            worlds.step(pool[i])
        steps, cpu, started = 0, process_cpu(pid), time.perf_counter()
        while time.perf_counter() - started < seconds or steps < 3:
            worlds.step(pool[steps % 16])
            steps += 1
        wall, cpu = time.perf_counter() - started, process_cpu(pid) - cpu
    return {"world_steps_per_s": steps * k / wall, "server_cpu_us": cpu / (steps * k) * 1e6}


def lockstep(address: str, pid: int, connections: int, seconds: float) -> dict:
    """C connections in lockstep on 2-seat foraging worlds (C=1: one connection, both seats of one world)."""
    owner = AgentClient(address, timeout_s=60.0)
    owner.hello(keep_alive_s=600.0)
    n_worlds = max(1, connections // 2)
    worlds = owner.create(FORAGING, seed=0, copies=n_worlds, deadline_ms=10_000).worlds
    agents = ["agent_0", "agent_1"]
    clients, seats = [], []
    for c in range(connections):
        client = AgentClient(address, timeout_s=60.0)
        client.hello(keep_alive_s=600.0)
        world = worlds[c // 2] if connections > 1 else worlds[0]
        mine = agents if connections == 1 else [agents[c % 2]]
        client.join(world, seats=mine)
        clients.append(client)
        seats.append((world, mine))
    rng = np.random.default_rng(0)
    actions = rng.integers(6, size=(64, connections, 2)).tolist()

    def tick(t: int) -> float:
        began = time.perf_counter()
        sent = [
            client.send_act(world, {a: actions[t % 64][c][i] for i, a in enumerate(mine)})
            for c, (client, (world, mine)) in enumerate(zip(clients, seats, strict=True))
        ]
        for client, request in zip(clients, sent, strict=True):
            client.recv(request)
        return time.perf_counter() - began

    for t in range(5):
        tick(t)
    times, cpu, started = [], process_cpu(pid), time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        times.append(tick(len(times)))
        owner.heartbeat()
    wall, cpu = time.perf_counter() - started, process_cpu(pid) - cpu
    for client in clients:
        client.close()
    for world in worlds:
        owner.close_world(world)
    owner.close()
    ticks = len(times)
    return {
        "worlds": n_worlds,
        "ticks_per_s": ticks / wall,
        "p50_us": float(np.percentile(times, 50) * 1e6),
        "p99_us": float(np.percentile(times, 99) * 1e6),
        "server_cpu_per_tick_us": cpu / ticks * 1e6,
        "server_cpu_per_act_us": cpu / ticks / connections * 1e6,
    }


def per_copy_step_us(seconds: float) -> float:
    """CPU µs of one foraging_v0 step in its per-copy (ParallelEnv) form, in process: what lockstep worlds run."""
    env = make_env(FORAGING, {})
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(6, size=(1024, 2)).tolist()
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        row = actions[calls % 1024]
        env.step({a: row[i] for i, a in enumerate(env.agents)})
        if not env.agents:
            env.reset()
        calls += 1
    return (time.process_time() - cpu) / calls * 1e6


def memory(address: str, pid: int) -> dict:
    """Resident bytes the server holds per connection, per per-copy world (foraging_v0, whose env is small: mostly the
    server's own bookkeeping; simple_spread, whose mpe2 env is large) and per vectorised copy. Measured first, in a
    fresh server, each kept until the end: freed memory would be reused by the next and hide its cost."""
    out, clients, owners = {}, [], []
    before = rss_bytes(pid)
    for _ in range(256):
        client = AgentClient(address, timeout_s=60.0)
        client.hello(keep_alive_s=600.0)
        clients.append(client)
    out["connection"] = (rss_bytes(pid) - before) / len(clients)
    for label, name, copies, join in (
        ("foraging_world", FORAGING, 1024, False),
        ("vector_copy", FORAGING, 4096, True),
        ("spread_world", SPREAD, 256, False),
    ):
        owner = AgentClient(address, timeout_s=120.0)  # one owner each: a session may own 4,096 worlds
        owner.hello(keep_alive_s=600.0)
        before = rss_bytes(pid)
        owners.append((owner, owner.create(name, CONFIGS[name], seed=0, copies=copies, join=join).worlds))
        out[label] = (rss_bytes(pid) - before) / copies
    for owner, worlds in owners:
        for world in worlds:
            owner.close_world(world)
        owner.close()
    for client in clients:
        client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time of each cell")
    parser.add_argument("--batches", default="1,16,64,256,1024", help="K, worlds per batch")
    parser.add_argument("--connections", default="1,8,64,256", help="C, lockstep client connections")
    args = parser.parse_args()
    ks = [int(k) for k in args.batches.split(",")]
    cs = [int(c) for c in args.connections.split(",")]
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.seconds:g} s per cell")
    results: dict = {"batched": {}, "lockstep": {}}
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=["--log-level=WARNING"]) as servers:
        address, pid = servers.addresses[0], servers.pids[0]
        mem = results["memory"] = memory(address, pid)
        print(
            f"\nmemory (server RSS): {mem['connection'] / 1024:,.1f} KiB per connection (256), "
            f"{mem['foraging_world'] / 1024:,.1f} KiB per per-copy foraging_v0 world (1,024), "
            f"{mem['vector_copy'] / 1024:,.2f} KiB per vectorised foraging_v0 copy (4,096), "
            f"{mem['spread_world'] / 1024:,.0f} KiB per simple_spread world (256)"
        )
        print("\nbatched (one client, stacked, one batch in flight)")
        print(
            f"{'scenario':>22} {'K':>5} {'world-steps/s':>14} {'server CPU/world-step':>22} {'in process':>11} {'ratio':>6}"
        )
        for name in (SPREAD, FORAGING):
            for k in ks:
                cell = batched(address, pid, name, k, args.seconds)
                cell["in_process_cpu_us"] = local = in_process(name, k, args.seconds / 2)
                results["batched"][f"{name} K={k}"] = cell
                label = "simple_spread_v3" if name == SPREAD else name
                print(
                    f"{label:>22} {k:>5} {cell['world_steps_per_s']:>14,.0f} {cell['server_cpu_us']:>19.1f} µs"
                    f" {local:>8.1f} µs {local / cell['server_cpu_us']:>6.2f}"
                )
        step = per_copy_step_us(args.seconds / 2)
        results["foraging_per_copy_step_us"] = step
        print(f"\nlockstep (2-seat foraging_v0 worlds; one step in process: {step:.0f} µs CPU)")
        print(
            f"{'connections':>12} {'worlds':>7} {'ticks/s':>9} {'p50':>10} {'p99':>10} {'server CPU/tick':>16}"
            f" {'per act':>9} {'per act - steps':>16}"
        )
        for c in cs:
            cell = lockstep(address, pid, c, args.seconds)
            cell["per_act_beyond_steps_us"] = (cell["server_cpu_per_tick_us"] - cell["worlds"] * step) / c
            results["lockstep"][c] = cell
            print(
                f"{c:>12} {cell['worlds']:>7} {cell['ticks_per_s']:>9,.0f} {cell['p50_us']:>7,.0f} µs"
                f" {cell['p99_us']:>7,.0f} µs {cell['server_cpu_per_tick_us']:>13,.0f} µs"
                f" {cell['server_cpu_per_act_us']:>6,.0f} µs {cell['per_act_beyond_steps_us']:>13,.0f} µs"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
