"""How much CPU the env server spends per message and per step, against the transport's and the scenario's own.

One run prints, measured side by side on the same machine (issue 11's rows):

- a bare pyzmq ROUTER process answering a DEALER, and agora's ``ping``, alternated in slices: the server's CPU per
  ping over the bare ROUTER's CPU per message (target <= 1.2);
- agent-steps/s of mpe2 simple_spread_v3 (N=3) in process (the ceiling) and through a server subprocess with one
  client holding K=1 and K=64 worlds (BatchedWorlds, stacked layout), K=64 alternated with in process: the
  throughput ratio (target >= 0.95) and the CPU ratio, with the server's CPU per world-step;
- three client processes sharing one world in lockstep: round trip p50/p99, the server's CPU per tick minus the
  scenario's own step (target <= 100 µs), and the same pattern with bare pyzmq (a ROUTER that answers once all
  three DEALERs have sent: the transport's floor for it).

CPU times are every thread's (the loop and libzmq's I/O thread), read from /proc in nanoseconds (bench/measure.py).
Wall-clock figures on a shared machine move with its load; the CPU figures and the ratios of one run are the ones
to compare. usage: python bench/server_throughput.py [--seconds 4] [--transport ipc] [--profile-server FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import pstats
import queue
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from measure import process_cpu

from agora_marl.agents import AgentClient, BatchedWorlds
from agora_marl.envserver.process import ServerProcesses
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"
N = 3


class InProcess:
    """The scenario stepped in this process with random discrete actions, measured over one or more slices: one env
    stepped again and again (the ceiling the targets name), or ``copies`` envs stepped in turn, as a server steps a
    batch (each step then finds less of its env in the CPU's caches)."""

    def __init__(self, copies: int = 1) -> None:
        self.envs = [make_env(SPREAD, {"N": N}) for _ in range(copies)]
        for i, env in enumerate(self.envs):
            env.reset(seed=i)
        self.actions = np.random.default_rng(0).integers(5, size=(1024, N)).tolist()
        self.steps, self.wall, self.cpu = 0, 0.0, 0.0

    def run(self, seconds: float) -> None:
        envs, actions, steps = self.envs, self.actions, 0
        started, cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds:
            for env in envs:
                row = actions[steps % 1024]
                env.step({a: row[i] for i, a in enumerate(env.agents)})
                if not env.agents:
                    env.reset()
                steps += 1
        self.steps += steps
        self.wall += time.perf_counter() - started
        self.cpu += time.process_time() - cpu


class Batched:
    """One client stepping K worlds per message (stacked layout), measured over one or more slices."""

    def __init__(self, address: str, num_worlds: int, server_pid: int) -> None:
        self.worlds = BatchedWorlds(address, SPREAD, {"N": N}, num_worlds=num_worlds, seed=0, layout="stacked")
        self.worlds.reset()
        self.actions = np.random.default_rng(0).integers(5, size=(64, num_worlds, N))
        for i in range(20):  # warm up
            self.worlds.step(self.actions[i % 64])
        self.server_pid, self.steps, self.wall, self.server_cpu = server_pid, 0, 0.0, 0.0

    def run(self, seconds: float) -> None:
        steps, cpu, started = 0, process_cpu(self.server_pid), time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.worlds.step(self.actions[steps % 64])
            steps += 1
        self.steps += steps
        self.wall += time.perf_counter() - started
        self.server_cpu += process_cpu(self.server_pid) - cpu

    def figures(self) -> tuple[float, float]:
        """Agent-steps/s, and the server's CPU µs per world-step."""
        k = self.worlds.num_worlds
        return self.steps * k * N / self.wall, self.server_cpu / (self.steps * k) * 1e6


def _lockstep_client(address: str, world: int, seat: str, steps: int, start, results) -> None:
    with AgentClient(address, timeout_s=30.0) as client:
        client.join(world, seats=[seat])
        start.wait(30)
        actions = np.random.default_rng(int(seat.rsplit("_", 1)[-1])).integers(5, size=steps).tolist()
        times = np.empty(steps)
        for i in range(steps):
            began = time.perf_counter()
            client.act(world, {seat: actions[i]})
            times[i] = time.perf_counter() - began
        results.put(times[50:].tolist())  # the first steps warm up


def lockstep(address: str, steps: int, server_pid: int) -> tuple[np.ndarray, float]:
    """Round-trip seconds of every act of N client processes, one seat each of one world; server CPU µs per tick."""
    ctx = mp.get_context("spawn")
    with AgentClient(address, timeout_s=30.0) as owner:
        created = owner.create(SPREAD, {"N": N}, seed=0, deadline_ms=5000)
        world, seats = created.worlds[0], created.spec.possible_agents
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_lockstep_client, args=(address, world, s, steps, start, results)) for s in seats]
        for proc in procs:
            proc.start()
        while sum(state == "held" for state in owner.list_worlds()[0]["seats"].values()) < N:
            time.sleep(0.05)
        cpu = process_cpu(server_pid)
        start.set()
        times = []
        deadline = time.monotonic() + 300
        while len(times) < len(procs) and time.monotonic() < deadline:
            owner.heartbeat()  # the owner is idle while the seats play: it must not lose its world
            with contextlib.suppress(queue.Empty):
                times.append(results.get(timeout=1.0))
        cpu = process_cpu(server_pid) - cpu
        for proc in procs:
            proc.join(10)
        owner.close_world(world)
    return np.concatenate(times), cpu / steps * 1e6


def _bare_router(clients: int, bind: str, address_queue) -> None:
    # Answers once every client has sent: the lockstep pattern with no protocol, no Python work, no scenario.
    socket = zmq.Context().socket(zmq.ROUTER)
    socket.bind(bind)
    address_queue.put(socket.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        messages = [socket.recv_multipart() for _ in range(clients)]
        if messages[0][1] == b"stop":
            return
        for message in messages:
            socket.send_multipart(message)


class BarePing:
    """A bare pyzmq ROUTER process answering a DEALER in this process: the transport's floor for one request."""

    def __init__(self, bind: str) -> None:
        ctx = mp.get_context("spawn")
        address_queue = ctx.Queue()
        self.router = ctx.Process(target=_bare_router, args=(1, bind, address_queue), daemon=True)
        self.router.start()
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address_queue.get(timeout=30))
        self.payload = b"x" * 64  # about an agora ping's header
        self.times: list[float] = []
        self.count, self.cpu = 0, 0.0
        self.run(200)  # connect and warm up
        self.times, self.count, self.cpu = [], 0, 0.0

    def run(self, count: int) -> None:
        socket, payload, times = self.socket, self.payload, []
        cpu = process_cpu(self.router.pid)
        for _ in range(count):
            began = time.perf_counter()
            socket.send(payload)
            socket.recv()
            times.append(time.perf_counter() - began)
        self.cpu += process_cpu(self.router.pid) - cpu
        self.count += count
        self.times += times

    def close(self) -> None:
        self.socket.send(b"stop")
        self.router.join(10)
        self.socket.close()


class AgoraPing:
    """The protocol's ``ping`` to the server (msgpack both ways, the session lookup, the server's dispatch)."""

    def __init__(self, address: str, server_pid: int) -> None:
        self.client = AgentClient(address)
        self.server_pid = server_pid
        for _ in range(200):
            self.client.ping()
        self.times: list[float] = []
        self.count, self.cpu = 0, 0.0

    def run(self, count: int) -> None:
        ping, times = self.client.ping, self.times
        cpu = process_cpu(self.server_pid)
        for _ in range(count):
            began = time.perf_counter()
            ping()
            times.append(time.perf_counter() - began)
        self.cpu += process_cpu(self.server_pid) - cpu
        self.count += count


def _bare_dealer(address: str, steps: int, start, results) -> None:
    socket = zmq.Context().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    start.wait(30)
    times = np.empty(steps)
    payload = b"x" * 64
    for i in range(steps):
        began = time.perf_counter()
        socket.send(payload)
        socket.recv()
        times[i] = time.perf_counter() - began
    results.put(times[100:].tolist())
    socket.send(b"stop")
    socket.close()


def bare_round_trips(clients: int, steps: int, bind: str) -> tuple[np.ndarray, float]:
    """Round-trip seconds of raw pyzmq DEALER processes to a ROUTER process (clients=1: the bare ping), and the
    ROUTER process's CPU µs per round of replies."""
    ctx = mp.get_context("spawn")
    address_queue, start, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    router = ctx.Process(target=_bare_router, args=(clients, bind, address_queue))
    router.start()
    address = address_queue.get(timeout=30)
    dealers = [ctx.Process(target=_bare_dealer, args=(address, steps, start, results)) for _ in range(clients)]
    for proc in dealers:
        proc.start()
    time.sleep(0.5)  # let every dealer connect
    cpu = process_cpu(router.pid)
    start.set()
    times = [results.get(timeout=120) for _ in dealers]
    cpu = process_cpu(router.pid) - cpu
    for proc in [*dealers, router]:
        proc.join(10)
    return np.concatenate(times), cpu / steps * 1e6


def start_server(bind: str, profile: str | None) -> ServerProcesses:
    """A server process (``python -m agora_marl.envserver``); with ``profile``, its CPU time profiled into that file."""
    flags = ["--log-level", "WARNING"]
    if profile:
        os.environ["AGORA_PROFILE_OUT"] = os.path.abspath(profile)
        flags += ["--scenario-module", str(Path(__file__).with_name("profiled_server.py"))]
    # A profiled server writes its profile at exit: give it time.
    server = ServerProcesses(binds=[bind], server_args=flags, inherit_output=True, grace_s=30 if profile else 5)
    server.start()
    return server


def _bare_bind(bind: str, name: str) -> str:
    return bind.replace(":0", ":*") if bind.startswith("tcp://") else bind + name


def measure(args: argparse.Namespace) -> dict[str, float]:
    f: dict[str, float] = {}
    local = InProcess()
    with tempfile.TemporaryDirectory() as tmp:
        bind = "tcp://127.0.0.1:0" if args.transport == "tcp" else f"ipc://{tmp}/"
        floor, lockstep_router_cpu = bare_round_trips(N, 2000, _bare_bind(bind, "lockstep"))
        f["bare_lockstep_router_cpu_us"] = lockstep_router_cpu
        f["bare_lockstep_p50_us"], f["bare_lockstep_p99_us"] = np.percentile(floor, [50, 99]) * 1e6
        server_bind = bind + ("server" if args.transport == "ipc" else "")
        server = start_server(server_bind, args.profile_server)
        try:
            address = server.addresses[0]
            server_pid = server.pids[0]
            # The bare ROUTER and agora's ping alternate in slices, so that a change in the machine's load cannot
            # favour one of them.
            bare, agora = BarePing(_bare_bind(bind, "ping")), AgoraPing(address, server_pid)
            for _ in range(args.rounds):
                bare.run(args.pings // args.rounds)
                agora.run(args.pings // args.rounds)
            bare.close()
            agora.client.close()
            f["bare_ping_router_cpu_us"] = bare.cpu / bare.count * 1e6
            f["bare_ping_p50_us"], f["bare_ping_p99_us"] = np.percentile(bare.times, [50, 99]) * 1e6
            f["agora_ping_server_cpu_us"] = agora.cpu / agora.count * 1e6
            f["agora_ping_p50_us"] = np.percentile(agora.times, 50) * 1e6
            if "batched" in args.phases:
                one = Batched(address, 1, server_pid)
                one.run(args.seconds)
                f["k1_agent_steps_per_s"], f["k1_server_cpu_us"] = one.figures()
                one.worlds.close()
                # In-process and K=64 alternate in short slices, so that a change in the machine's load between
                # phases cannot make one of them look faster.
                many, local_many = Batched(address, 64, server_pid), InProcess(64)
                for _ in range(args.rounds):
                    local.run(args.seconds / args.rounds)
                    many.run(args.seconds / args.rounds)
                    local_many.run(args.seconds / args.rounds)
                f["k64_agent_steps_per_s"], f["k64_server_cpu_us"] = many.figures()
                f["in_process_64_step_cpu_us"] = local_many.cpu / local_many.steps * 1e6
                f["in_process_64_agent_steps_per_s"] = local_many.steps * N / local_many.wall
                many.worlds.close()
            else:
                local.run(args.seconds)
            if "lockstep" in args.phases:
                round_trips, f["lockstep_server_cpu_us"] = lockstep(address, args.lockstep_steps, server_pid)
                f["lockstep_p50_us"], f["lockstep_p99_us"] = np.percentile(round_trips, [50, 99]) * 1e6
                local.run(args.seconds / args.rounds)  # the scenario's own step, measured just after the ticks
        finally:
            server.stop()
    f["in_process_agent_steps_per_s"] = local.steps * N / local.wall
    f["in_process_step_us"], f["in_process_step_cpu_us"] = local.wall / local.steps * 1e6, local.cpu / local.steps * 1e6
    return {k: float(v) for k, v in f.items()}


def report(f: dict[str, float]) -> None:
    step, step_cpu = f["in_process_step_us"], f["in_process_step_cpu_us"]
    print(f"mpe2 simple_spread_v3, N={N}, discrete actions; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(
        f"  in process                      {f['in_process_agent_steps_per_s']:>9,.0f} agent-steps/s   "
        f"{step:.0f} µs/step ({step_cpu:.0f} µs CPU)"
    )
    print(
        f"  bare pyzmq ping                 p50 {f['bare_ping_p50_us']:>5.0f} µs  p99 {f['bare_ping_p99_us']:>6.0f} µs"
        f"   ROUTER CPU {f['bare_ping_router_cpu_us']:.1f} µs/message"
    )
    print(
        f"  agora ping                      p50 {f['agora_ping_p50_us']:>5.0f} µs"
        f"               server CPU {f['agora_ping_server_cpu_us']:.1f} µs/ping"
    )
    f["ratio_ping_cpu_vs_bare"] = ping = f["agora_ping_server_cpu_us"] / f["bare_ping_router_cpu_us"]
    print(f"  ping CPU / bare ROUTER CPU                {ping:.2f}   target <= 1.2: {_verdict(ping <= 1.2)}")
    if "k64_agent_steps_per_s" in f:
        for k in (1, 64):
            rate, cpu = f[f"k{k}_agent_steps_per_s"], f[f"k{k}_server_cpu_us"]
            print(
                f"  server, 1 client, K={k:<2}         {rate:>9,.0f} agent-steps/s   server CPU {cpu:.0f} µs/world-step"
            )
        f["ratio_k64_vs_in_process"] = ratio = f["k64_agent_steps_per_s"] / f["in_process_agent_steps_per_s"]
        f["ratio_k64_cpu"] = cpu_ratio = step_cpu / f["k64_server_cpu_us"]
        print(f"  batched K=64 / in process                 {ratio:.2f}   target >= 0.95: {_verdict(ratio >= 0.95)}")
        print(f"  in-process step CPU / server CPU (K=64)   {cpu_ratio:.2f}")
        f["ratio_k64_vs_64_in_process"] = ratio64 = f["k64_agent_steps_per_s"] / f["in_process_64_agent_steps_per_s"]
        print(
            f"  64 envs stepped in turn in process        {f['in_process_64_agent_steps_per_s']:>9,.0f} agent-steps/s"
            f"   {f['in_process_64_step_cpu_us']:.0f} µs CPU/step ({f['in_process_64_step_cpu_us'] / step_cpu:.2f}x one env's)"
        )
        print(f"  batched K=64 / 64 envs in process         {ratio64:.2f}")
    if "lockstep_p50_us" in f:
        p50, p99, cpu = f["lockstep_p50_us"], f["lockstep_p99_us"], f["lockstep_server_cpu_us"]
        print(
            f"  lockstep, {N} client processes    p50 {p50:>5.0f} µs  p99 {p99:>6.0f} µs   server CPU {cpu:.0f} µs/tick"
        )
        print(
            f"  bare pyzmq, {N} DEALERs lockstep  p50 {f['bare_lockstep_p50_us']:>5.0f} µs"
            f"  p99 {f['bare_lockstep_p99_us']:>6.0f} µs   ROUTER CPU {f['bare_lockstep_router_cpu_us']:.0f} µs/round"
        )
        f["lockstep_cpu_over_step_us"] = over = cpu - step_cpu
        print(f"  server CPU per tick - scenario step       {over:.0f} µs   target <= 100: {_verdict(over <= 100)}")
        f["ratio_lockstep_overhead_vs_ping"] = overhead = (p50 - step) / f["bare_ping_p50_us"]
        print(f"  (lockstep p50 - step) / bare ping p50     {overhead:.2f}")
    print(json.dumps({k: round(v, 3) for k, v in f.items()}))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each throughput phase")
    parser.add_argument("--rounds", type=int, default=8, help="alternating in-process / K=64 slices")
    parser.add_argument("--lockstep-steps", type=int, default=2000, help="acts per lockstep client")
    parser.add_argument("--pings", type=int, default=8000, help="pings of each kind (bare, agora), over the rounds")
    parser.add_argument("--transport", default="tcp", choices=["tcp", "ipc"], help="loopback tcp:// or ipc://")
    parser.add_argument("--phases", nargs="+", default=["batched", "lockstep"], choices=["ping", "batched", "lockstep"])
    parser.add_argument("--profile-server", metavar="FILE", help="profile the server's CPU time, print its top costs")
    args = parser.parse_args()
    report(measure(args))
    if args.profile_server:
        print(f"\nserver CPU profile ({args.profile_server}), top 30 by own time:")
        pstats.Stats(args.profile_server).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
