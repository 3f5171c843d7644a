"""The server's own Python work per request, with no socket: requests replayed through ``EnvServer.serve_one``.

The socket benchmarks (server_throughput.py, vector_scenario.py) measure the whole server, whose CPU per message
is mostly libzmq's and the kernel's and moves by tens of percent with the machine's load. This one replays packed
requests in this process, into a server whose socket only counts what is sent, alternated in slices with the
scenario's own work, and prints the server's Python cost beyond the scenario's (the minimum over the slices):

- ``ping``: one request and its reply;
- ``lockstep``: one tick of 3 sessions holding one seat each of an mpe2 simple_spread world (3 ``act`` requests,
  the step, 3 replies), beyond the scenario's step;
- ``batch``: one ``step_batch`` of K=256 vector-backed foraging_v0 and cover_v0 worlds, beyond the vectorised step
  in process. (A batch of per-copy mpe2 worlds is left out: its K steps, ~20 ms at K=64, vary by more than the
  ~1 ms the server adds; bench/server_throughput.py compares it with the envs stepped in process.)

Hot caches make these figures a lower bound: in a serving process the scenario's step evicts the server's code and
data between requests. usage: python bench/replay.py [--seconds 2] [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import zmq

from agora_marl.envserver.protocol import pack, unpack
from agora_marl.envserver.server import EnvServer, ServerConfig
from agora_marl.scenarios import make_env, make_vector

SPREAD = "mpe2.simple_spread_v3:parallel_env"


class _CountingSocket:
    """Stands in for the ROUTER socket: keeps the last message sent (a list of frames), counts the messages."""

    def __init__(self) -> None:
        self.messages, self.last, self._current = 0, [], []

    def send(self, frame, flags: int = 0, copy: bool = True, **_) -> None:
        self._current.append(frame)
        if not flags & zmq.SNDMORE:
            self.last, self._current = self._current, []
            self.messages += 1

    def close(self, linger: int = 0) -> None:
        pass


def _frames(message: dict, route: bytes) -> list:
    """A request as the loop receives it: routing id, header and arrays as bytes."""
    return [route] + [f if isinstance(f, bytes) else np.ascontiguousarray(f).tobytes() for f in pack(message)]


class Replay:
    """A server with no socket, and requests sent to it by routing id."""

    def __init__(self) -> None:
        self.server = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0"))
        self.server.socket.close()
        self.server.socket = self.server.delivery.socket = self.socket = _CountingSocket()

    def request(self, message: dict, route: bytes = b"r0") -> dict:
        self.server.serve_one(_frames(message, route))
        while self.server.run_deferred():  # a large create is built a chunk per loop turn
            pass
        reply = unpack([bytes(memoryview(f).cast("B")) for f in self.socket.last[1:]])
        assert reply.get("op") != "error", reply
        return reply

    def hello(self, route: bytes) -> str:
        return self.request({"op": "hello", "id": 1, "frames": "joined"}, route)["secret"]

    def serve(self, frames: list) -> None:
        self.server.serve_one(list(frames))

    def close(self) -> None:
        self.server.stop()


def alternate(ours: Callable[[int], None], theirs: Callable[[int], None], seconds: float, rounds: int) -> tuple:
    """CPU µs per call of ``ours`` and of ``theirs``, each the minimum over ``rounds`` alternated slices."""
    best = [float("inf"), float("inf")]
    for i in range(10):  # warm up
        ours(i)
        theirs(i)
    calls = [0, 0]
    for _ in range(rounds):
        for j, fn in enumerate((ours, theirs)):
            n, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds / rounds:
                fn(calls[j] + n)
                n += 1
            calls[j] += n
            best[j] = min(best[j], (time.process_time() - cpu) / n * 1e6)
    return best[0], best[1]


def ping(seconds: float, rounds: int) -> dict:
    replay = Replay()
    frames = _frames({"op": "ping", "id": 5, "secret": replay.hello(b"r0")}, b"r0")
    cost, _ = alternate(lambda i: replay.serve(frames), lambda i: None, seconds, rounds)
    replay.close()
    return {"server_us": cost}


def lockstep(seconds: float, rounds: int) -> dict:
    replay = Replay()
    routes = [b"r%d" % i for i in range(4)]
    secrets = [replay.hello(r) for r in routes]
    created = replay.request(
        {
            "op": "create",
            "id": 2,
            "secret": secrets[3],
            "scenario": SPREAD,
            "config": {"N": 3},
            "seed": 0,
            "deadline_ms": 5000,
        },
        routes[3],
    )
    world, agents = created["worlds"][0], created["spec"]["possible_agents"]
    for i, agent in enumerate(agents):
        replay.request({"op": "join", "id": 3, "secret": secrets[i], "world": world, "seats": [agent]}, routes[i])
    actions = np.random.default_rng(0).integers(5, size=(64, len(agents))).tolist()
    ticks = [
        [
            _frames(
                {"op": "act", "id": 10 + t, "secret": secrets[i], "world": world, "actions": {a: actions[t][i]}},
                routes[i],
            )
            for i, a in enumerate(agents)
        ]
        for t in range(64)
    ]
    env = make_env(SPREAD, {"N": 3})
    env.reset(seed=0)

    def tick(t: int) -> None:
        for frames in ticks[t % 64]:
            replay.serve(frames)

    def step(t: int) -> None:
        row = actions[t % 64]
        env.step({a: row[i] for i, a in enumerate(env.agents)})
        if not env.agents:
            env.reset()

    sent = replay.socket.messages
    tick(0)
    assert replay.socket.messages - sent == len(agents), "a tick must answer every act"
    ours, scenario = alternate(tick, step, seconds, rounds)
    replay.close()
    return {"tick_us": ours, "step_us": scenario, "server_us": ours - scenario}


def batch(name: str, config: dict, k: int, seconds: float, rounds: int) -> dict:
    """One step_batch of K vector-backed worlds of a vectorised scenario, against its vectorised step."""
    replay = Replay()
    secret = replay.hello(b"r0")
    created = replay.request(
        {
            "op": "create",
            "id": 2,
            "secret": secret,
            "scenario": name,
            "config": config,
            "copies": k,
            "join": True,
            "seed": 0,
        }
    )
    worlds, agents = created["worlds"], created["spec"]["possible_agents"]
    n_actions = make_env(name, config).action_space(agents[0]).n
    pool = np.random.default_rng(0).integers(n_actions, size=(16, k, len(agents)))
    replay.request({"op": "reset_batch", "id": 3, "secret": secret, "worlds": worlds, "layout": "stacked"})
    requests = [
        _frames(
            {
                "op": "step_batch",
                "id": 10 + i,
                "secret": secret,
                "worlds": worlds,
                "layout": "stacked",
                "actions": pool[i],
            },
            b"r0",
        )
        for i in range(16)
    ]
    vector = make_vector(name, k, config)
    vector.reset(seed=0)

    def local(i: int) -> None:
        _, _, terminated, truncated = vector.step({a: pool[i % 16][:, j] for j, a in enumerate(agents)})
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            vector.reset(copies=done)

    ours, scenario = alternate(lambda i: replay.serve(requests[i % 16]), local, seconds, rounds)
    replay.close()
    return {
        "batch_us": ours,
        "scenario_us": scenario,
        "server_us": ours - scenario,
        "per_world_us": (ours - scenario) / k,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time of each case, in all")
    parser.add_argument("--rounds", type=int, default=8, help="alternated slices (the minimum is kept)")
    args = parser.parse_args()
    s, r = args.seconds, args.rounds
    results = {"ping": ping(s, r), "lockstep": lockstep(s, r)}
    print(f"ping                                server {results['ping']['server_us']:7.1f} µs")
    lock = results["lockstep"]
    print(
        f"lockstep tick, 3 seats              server {lock['server_us']:7.1f} µs beyond the step ({lock['step_us']:.0f} µs)"
    )
    for name, config, k in (("foraging_v0", {}, 256), ("cover_v0", {}, 256)):
        cell = results[f"{name} K={k}"] = batch(name, config, k, s, r)
        print(
            f"step_batch {name:>16} K={k:<4}  server {cell['server_us']:7.1f} µs beyond the scenario's "
            f"{cell['scenario_us']:,.0f} µs ({cell['per_world_us']:.2f} µs per world)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
