"""A long fuzz of a real agora server, with attackers, and what the load costs a well-behaved client.

usage: python bench/fuzz_server.py [--messages 50000 | --seconds S] [--seed 1] [--fuzzers 3] [--out FILE]

It starts one server process (``envserver.process.ServerProcesses``: ``python -m agora_marl.envserver --bind
tcp://127.0.0.1:0 --addr-file ...``, with a 1 MiB message limit) and runs, in phases:

1. ``alone``: the bystander (a thread of this process, through AgentClient) replays a seeded episode, then measures
   its round trips with no load for ``--baseline-s``: a ``ping``, then one lockstep step of a world whose seats it
   holds (seeded actions), in turn, every few milliseconds. It goes on doing so through every later phase.
2. ``fuzz``: each in a process of its own,

   - ``--fuzzers`` clients cycle through tests/fuzzing.py's mutations and tampered array tables of every operation,
     in a shuffled order and with a fresh seed each round, until ``--messages`` are sent (shared out between them)
     or ``--seconds`` pass. Every request must get a proper reply (``tests.fuzzing.reply_problem``): never
     ``internal``, never none;
   - ``oversized``: messages over the limit in 2 to 4 frames of half the limit must each get ``too_large``; a frame
     over the limit is cut off by libzmq (the connection drops), after which the socket reconnects and must be
     answered again;
   - ``never-read``: a client that steps, renders and observes a world of its own, ``--never-read-rate`` requests
     a second, and never reads a reply (it lets the server's queue of replies to it fill);
   - ``reused ids``: connections with routing ids of their own choosing: a text one must get ``not_allowed`` for
     everything; one of libzmq's own form (served like any) tries what an earlier connection made, without its
     secret and with a session of its own (must be refused), then with the secret (must work).
3. ``settle``: ``--settle-s`` with the bystander alone, long enough (by default) for the server to forget the load's
   sessions and close their worlds; then an operator lists what is left.
4. ``partial``: a raw ZMTP peer (tests.fuzzing.ZmtpPeer) sends a header and then empty frames flagged "more",
   ``--partial-bytes`` on the wire, and never the last frame; a libzmq DEALER does the same with 64 KiB frames
   (which libzmq keeps in the sender's own queue). Both hold their connections for ``--partial-s``, then close.
5. The bystander replays the episode (it must be bit-identical to the first replay), and its lockstep world's
   whole trajectory, every step taken under load included, is replayed in a fresh world (bit-identical too).

The server's RSS (VmRSS of /proc/PID/status) is sampled all along: before the load, at its peak and after each
phase, with the kernel's own peak (VmHWM). It prints a markdown table, writes JSON with ``--out``, and exits 1
when a fuzzed request got ``internal``, an improper reply or no reply, an attacker's refusal was not as due, the
server died or logged an internal error, the bystander timed out, or a trajectory changed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

# tests/fuzzing.py holds the CI fuzzer's machinery, which this bench runs for longer: put the repository root on
# sys.path so that ``tests`` imports (spawned worker processes run this too, when they import this file).
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agora_marl.agents import AgentClient  # noqa: E402
from agora_marl.envserver.process import ServerProcesses  # noqa: E402
from agora_marl.envserver.protocol import pack, unpack, vocabulary  # noqa: E402
from tests import fuzzing  # noqa: E402
from tests.fuzzing import SPREAD, ZmtpPeer, reply_code  # noqa: E402
from tests.rawwire import RawClient  # noqa: E402

#: How long a fuzzed request may wait for its reply before it counts as unanswered.
REPLY_TIMEOUT_S = 10.0
#: How long a worker process may take to start (imports) and to hand in its report once told to stop.
WORKER_TIMEOUT_S = 60.0
#: The bystander's pause between round trips: it is a client, not a load.
BYSTANDER_PAUSE_S = 0.004
#: Most problem examples kept per worker.
EXAMPLES = 20


# ---- the server's memory ---------------------------------------------------------------------------------------


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak RSS) of a process, in MiB, from /proc; empty when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM") if key in fields}


# ---- the fuzzing clients -----------------------------------------------------------------------------------------


def fuzz_client(address: str, operator: str, seed: int, index: int, budget: float, go, stop, results) -> None:
    """Send fuzzed requests of every operation, round after round, until ``budget`` are sent or ``stop`` is set."""
    report: dict[str, Any] = {"sent": 0, "codes": collections.Counter(), "problems": [], "unanswered": 0}
    report.update(late=0, rounds=0, error=None)
    try:
        client = RawClient(address, timeout_s=REPLY_TIMEOUT_S)
        context = fuzzing.Context(client, operator)
        tampered_ids = itertools.count(-1, -1)  # negative: never one of RawClient's own ids
        waiting: set[int] = set()  # requests that got no reply in time
        results.put(("ready", index))
        go.wait(WORKER_TIMEOUT_S)

        def exchange(op: str, request_id: int, sent: Any) -> None:
            report["sent"] += 1
            reply = _reply_to(client, request_id, waiting, report)
            if reply is None:
                _example(report, "no reply", sent, None)
                return
            problem = fuzzing.reply_problem(reply, op, request_id)
            if problem:
                _example(report, problem, sent, reply)
            report["codes"][reply_code(reply)] += 1
            fuzzing.tidy(client, context, reply)

        def more() -> bool:
            return report["sent"] < budget and not stop.is_set()

        for round_ in itertools.count():
            if not more():
                break
            rng = random.Random(f"{seed}:{index}:{round_}")
            cases = fuzzing.variants(context)
            rng.shuffle(cases)
            for op, current in cases:
                for message in fuzzing.mutations(current, rng):
                    if not more():
                        break
                    exchange(op, client.send(message), message)
                tampered_id = next(tampered_ids)
                for frames in fuzzing.tampered_tables(current(), tampered_id, rng):
                    if not more():
                        break
                    client.send_frames(frames)
                    exchange(op, tampered_id, frames[0])
            report["rounds"] = round_ + 1
    except Exception:
        report["error"] = traceback.format_exc(limit=6)
    results.put(("fuzz", report))


def _reply_to(client: RawClient, request_id: int, waiting: set[int], report: dict) -> dict | None:
    """The reply to ``request_id``; a late reply to an earlier request is counted and skipped."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            reply = client.recv(timeout_ms=max(1, int(remaining * 1000)))
        except TimeoutError:
            break
        if reply.get("id") == request_id:
            return reply
        if reply.get("id") in waiting:
            waiting.discard(reply["id"])
            report["late"] += 1
        else:
            _example(report, f"a reply to request {reply.get('id')!r}, which awaits none", None, reply)
    waiting.add(request_id)
    report["unanswered"] += 1
    return None


def _example(report: dict, problem: str, sent: Any, reply: dict | None) -> None:
    report["problems"].append(problem)
    if len(report.setdefault("examples", [])) < EXAMPLES:
        report["examples"].append({"problem": problem, "sent": repr(sent)[:400], "reply": repr(reply)[:400]})


# ---- the attackers -----------------------------------------------------------------------------------------------


def oversized(address: str, limit: int, go, stop, results) -> None:
    """A message over the limit in frames under it must get ``too_large``, or, far over it (more than the limit
    still arriving when the server looks), may close the connection instead; a frame over the limit drops the
    connection (libzmq). After a drop the socket reconnects and must be answered again."""
    report: dict[str, Any] = {"sent": 0, "codes": collections.Counter(), "unexpected": [], "cut": 0, "recovered": 0}
    socket = _dealer(address)
    results.put(("ready", "oversized"))
    go.wait(WORKER_TIMEOUT_S)
    for cycle in itertools.count(1):  # one cycle at least, however soon the stop comes
        header = msgpack.packb({"v": vocabulary.PROTOCOL_VERSION, "op": "ping", "id": cycle})
        frames = 2 + cycle % 3
        socket.send_multipart([header, *[bytes(limit // 2)] * frames])
        reply = _recv(socket, cycle, REPLY_TIMEOUT_S)
        code = "no reply" if reply is None else reply_code(reply)
        report["codes"][code] += 1
        if code == "no reply" and frames > 2:  # far over: the server closed the connection while it arrived
            report["recovered"] += _answered_again(socket, cycle)
        elif code != vocabulary.TOO_LARGE:
            report["unexpected"].append(code)
        socket.send_multipart([header, bytes(limit + 1)])
        report["cut"] += 1
        report["recovered"] += _answered_again(socket, cycle)
        report["sent"] += 2
        if stop.wait(0.05):
            break
    socket.close(linger=0)
    results.put(("oversized", report))


def _answered_again(socket: zmq.Socket, request_id: int) -> bool:
    """Whether pings on ``socket`` get an answer within REPLY_TIMEOUT_S: a ping sent just after the frame that cut
    the connection may be lost with it, so one is sent every second."""
    for attempt in range(int(REPLY_TIMEOUT_S)):
        ping_id = -(request_id * 100 + attempt)
        socket.send(msgpack.packb({"v": vocabulary.PROTOCOL_VERSION, "op": "ping", "id": ping_id}))
        reply = _recv(socket, ping_id, 1.0)
        if reply is not None:
            return reply.get("op") == "pong"
    return False


def never_read(address: str, rate: float, go, stop, results) -> None:
    """Step and render a world of its own, ``rate`` requests a second, and read no reply until told to stop.

    It reads as little as a client can (RCVHWM 1, a small kernel buffer), so that the server's own queue of replies
    to it fills: what that costs the server is what this attacker measures.
    """
    report: dict[str, Any] = {"sent": 0, "refused_sends": 0, "replies_queued_here": 0}
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, 1)
    socket.setsockopt(zmq.RCVBUF, 4096)
    socket.connect(address)
    secret = _ask(socket, {"op": "hello", "name": "never-read"})["secret"]
    create = {"op": "create", "scenario": SPREAD, "seed": 5, "join": True, "render": True, "wait_for_seats": False}
    world = _ask(socket, {**create, "secret": secret})["worlds"][0]
    act = {"op": "act", "world": world, "actions": {f"agent_{i}": 1 for i in range(3)}}
    requests = itertools.cycle([act, {"op": "render", "world": world}, {"op": "observe", "world": world}])
    results.put(("ready", "never_read"))
    go.wait(WORKER_TIMEOUT_S)
    began = time.monotonic()
    while not stop.is_set() or (not report["sent"] and time.monotonic() < began + REPLY_TIMEOUT_S):
        message = {"v": vocabulary.PROTOCOL_VERSION, "id": report["sent"] + 1, "secret": secret, **next(requests)}
        try:
            socket.send_multipart(pack(message), zmq.NOBLOCK)
            report["sent"] += 1
        except zmq.Again:  # its own send queue is full: the server stopped reading this connection
            report["refused_sends"] += 1
        stop.wait(max(0.0, began + report["sent"] / rate - time.monotonic()))
    while socket.poll(0):
        socket.recv_multipart()
        report["replies_queued_here"] += 1
    socket.close(linger=0)
    results.put(("never_read", report))


def reused_ids(address: str, go, stop, results) -> None:
    """Routing ids a peer chooses. One of its own (text) is refused with ``not_allowed`` for every request. One of
    libzmq's own form (a zero byte and 4 more), which the server cannot tell from an id it made, is served with no
    authority: what another connection made answers it only with that connection's secret."""
    report: dict[str, Any] = {"cycles": 0, "refused": 0, "leaks": [], "denied": []}
    results.put(("ready", "reused_ids"))
    go.wait(WORKER_TIMEOUT_S)
    for cycle in itertools.count():  # one cycle at least, however soon the stop comes
        first = _dealer(address)
        secret = _ask(first, {"op": "hello", "name": "first"})["secret"]
        created = _ask(first, {"op": "create", "scenario": SPREAD, "seed": 1, "join": True, "secret": secret})
        world, everyone = created["worlds"][0], {f"agent_{i}": 0 for i in range(3)}
        first.close(linger=0)

        chooser = _dealer(address, b"fuzz-reused-%d" % (cycle % 3))
        for message in ({"op": "ping"}, {"op": "hello"}, {"op": "close", "world": world, "secret": secret}):
            got = reply_code(_ask(chooser, message))
            report["refused"] += got == vocabulary.NOT_ALLOWED
            if got != vocabulary.NOT_ALLOWED:
                report["leaks" if got == "ok" else "denied"].append(f"chosen id, {message['op']}: {got}")
        chooser.close(linger=0)

        second = _dealer(address, b"\0" + os.urandom(4))
        own = _ask(second, {"op": "hello", "name": "second"})["secret"]
        refusals = [
            ({"op": "close", "world": world}, vocabulary.NO_SESSION),
            ({"op": "act", "world": world, "actions": everyone}, vocabulary.NO_SESSION),
            ({"op": "close", "world": world, "secret": own}, vocabulary.NOT_OWNER),
            ({"op": "act", "world": world, "actions": everyone, "secret": own}, vocabulary.NOT_YOUR_SEAT),
            ({"op": "observe", "world": world, "secret": own}, vocabulary.NOT_YOUR_SEAT),
            ({"op": "reset", "world": world, "secret": own}, vocabulary.NOT_OWNER),
        ]
        for message, code in refusals:
            got = reply_code(_ask(second, message))
            report["refused"] += got == code
            if got != code:
                report["leaks" if got == "ok" else "denied"].append(f"{message['op']}: {got}, not {code}")
        got = reply_code(_ask(second, {"op": "close", "world": world, "secret": secret}))
        if got != "ok":
            report["denied"].append(f"close with the secret: {got}")
        _ask(second, {"op": "bye", "secret": own})
        second.close(linger=0)
        report["cycles"] += 1
        if stop.wait(0.02):
            break
    results.put(("reused_ids", report))


def partial(address: str, wire_bytes: int, go, stop, results) -> None:
    """Start a message and never finish it: by hand over ZMTP (the server holds the frames), and through libzmq
    (the frames stay in this process)."""
    header = msgpack.packb({"v": vocabulary.PROTOCOL_VERSION, "op": "ping", "id": 1})
    raw, socket = ZmtpPeer(address), _dealer(address)
    results.put(("ready", "partial"))
    go.wait(WORKER_TIMEOUT_S)
    own_before = memory_mib(os.getpid()).get("VmRSS", math.nan)
    raw.send(header, more=True)
    socket.send(header, zmq.SNDMORE)
    block = 1 << 16  # bytes on the wire per burst: 32768 empty frames
    sent, cut_off = 0, False
    while sent < wire_bytes and not stop.is_set():
        try:
            raw.send_raw(ZmtpPeer.empty_frames(block // 2))
        except OSError:  # the server closed the connection: past --max-message-bytes of a message still arriving
            cut_off = True
            break
        socket.send(bytes(block), zmq.SNDMORE)
        sent += block
        stop.wait(0.005)
    report = {"raw_wire_bytes": sent, "raw_frames": sent // 2, "libzmq_bytes": sent, "raw_cut_off": cut_off}
    report["own_rss_growth_mib"] = memory_mib(os.getpid()).get("VmRSS", math.nan) - own_before
    stop.wait(WORKER_TIMEOUT_S * 10)
    raw.close()
    socket.close(linger=0)
    results.put(("partial", report))


def _dealer(address: str, routing_id: bytes | None = None) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        socket.setsockopt(zmq.ROUTING_ID, routing_id)
    socket.connect(address)
    return socket


def _recv(socket: zmq.Socket, request_id: int, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0 and socket.poll(max(1, int(remaining * 1000))):
        reply = unpack(socket.recv_multipart())
        if reply.get("id") == request_id:
            return reply
    return None


_ask_ids = itertools.count(1)


def _ask(socket: zmq.Socket, message: dict) -> dict:
    request_id = next(_ask_ids)
    socket.send_multipart(pack({"v": vocabulary.PROTOCOL_VERSION, "id": request_id, **message}))
    reply = _recv(socket, request_id, REPLY_TIMEOUT_S)
    if reply is None:
        raise TimeoutError(f"no reply to {message['op']} within {REPLY_TIMEOUT_S} s")
    return reply


# ---- the bystander -----------------------------------------------------------------------------------------------


def _digest(step) -> str:
    """A hash of everything a step returned that the seed and the actions decide."""
    h = hashlib.sha256(f"{step.tick} {step.episode} {step.agents}".encode())
    for part in (step.obs, step.final_obs or {}):
        for agent in sorted(part):
            h.update(agent.encode() + np.ascontiguousarray(part[agent]).tobytes())
    h.update(repr(sorted(step.rewards.items())).encode())
    h.update(repr((sorted(step.terminated.items()), sorted(step.truncated.items()))).encode())
    return h.hexdigest()


class Bystander:
    """A well-behaved client: pings and steps a world of its own in lockstep, timing every round trip by phase."""

    def __init__(self, address: str, seed: int):
        self.client = AgentClient(address, timeout_s=30.0, name="bystander")
        self.seed = seed
        self.phase = "alone"
        self.times: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: {"ping": [], "step": []})
        self.trajectory: list[str] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def episode(self, seed: int, steps: int) -> list[str]:
        """Digests of ``steps`` seeded steps of a fresh world (``seed``, actions from ``seed``)."""
        created = self.client.create(SPREAD, seed=seed, join=True, wait_for_seats=False)
        world, agents = created.worlds[0], created.spec.possible_agents
        rng = np.random.default_rng(seed)
        out = [_digest(self.client.act(world, dict(zip(agents, rng.integers(5, size=3).tolist(), strict=True))))
               for _ in range(steps)]  # fmt: skip
        self.client.close_world(world)
        return out

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lockstep_seed = self.seed + 1
        try:
            created = self.client.create(SPREAD, seed=lockstep_seed, join=True, wait_for_seats=False)
            world, agents = created.worlds[0], created.spec.possible_agents
            rng = np.random.default_rng(lockstep_seed)
            while not self._stop.is_set():
                times = self.times[self.phase]
                began = time.perf_counter()
                self.client.ping()
                pinged = time.perf_counter()
                step = self.client.act(world, dict(zip(agents, rng.integers(5, size=3).tolist(), strict=True)))
                times["ping"].append(pinged - began)
                times["step"].append(time.perf_counter() - pinged)
                self.trajectory.append(_digest(step))
                self._stop.wait(BYSTANDER_PAUSE_S)
            self.client.close_world(world)
        except Exception:
            self.error = traceback.format_exc(limit=6)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def lockstep_replay(self) -> list[str]:
        """The lockstep world's trajectory, replayed in a fresh world with the same seed and actions."""
        return self.episode(self.seed + 1, len(self.trajectory))

    def latency(self) -> dict[str, dict[str, dict[str, float]]]:
        """n, p50, p99 and max milliseconds of each kind of round trip, by phase."""
        return {phase: {kind: _stats(values) for kind, values in kinds.items()} for phase, kinds in self.times.items()}


def _stats(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    ms = np.asarray(seconds) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    return {"n": len(ms), "p50": float(p50), "p99": float(p99), "max": float(ms.max())}


# ---- the run -----------------------------------------------------------------------------------------------------


class Load:
    """Worker processes started together, released together (``go``), stopped together, and their reports."""

    def __init__(self, ctx, results) -> None:
        self.ctx, self.results = ctx, results
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.procs: list[mp.Process] = []
        self.reports: dict[str, Any] = collections.defaultdict(list)
        self.released = math.nan
        self.stopped = math.nan

    def add(self, name: str, target, *args) -> None:
        """A worker ``target(*args, go, stop, results)``, whose report comes under ``name``."""
        args = (name, target, (*args, self.go, self.stop, self.results), self.results)
        self.procs.append(self.ctx.Process(target=_guarded, args=args, daemon=True))

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            kind, payload = self._get()
            if kind != "ready":
                self.take(kind, payload)  # it failed before it was ready
        self.go.set()
        self.released = time.monotonic()

    def take(self, kind: str, payload: dict) -> None:
        """Keep a report, with when it came: seconds after the release, and after the stop."""
        now = time.monotonic()
        payload.update(reported_after_s=now - self.released, reported_after_stop_s=now - self.stopped)
        self.reports[kind].append(payload)

    def finish(self, expected: int) -> None:
        """Stop the workers and collect ``expected`` reports."""
        self.stop.set()
        self.stopped = time.monotonic()
        deadline = self.stopped + WORKER_TIMEOUT_S
        while sum(len(r) for r in self.reports.values()) < expected and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.take(*self.results.get(timeout=1.0))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def _get(self):
        return self.results.get(timeout=WORKER_TIMEOUT_S)


def _guarded(name: str, target, args: tuple, results) -> None:
    """Run a worker; an exception becomes its report (before it was ready too, so that the run goes on)."""
    try:
        target(*args)
    except Exception:
        results.put((name, {"error": traceback.format_exc(limit=6)}))


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    budget = args.messages if args.messages is not None else (math.inf if args.seconds else 50_000)
    fuzz_s = args.seconds or args.max_seconds
    out: dict[str, Any] = {"argv": sys.argv[1:], "seed": args.seed, "fuzzers": args.fuzzers}
    logs = Path(tempfile.mkdtemp(prefix="agora-fuzz-"))
    operator_file = logs / "operator"
    server_args = [
        f"--max-message-bytes={args.max_message_bytes}",
        "--heartbeat-timeout=5",
        "--max-keep-alive=10",
        "--log-level=WARNING",
        f"--operator-file={operator_file}",
    ]
    out["server_flags"] = server_args[:-1]
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=server_args, log_dir=logs) as servers:
        address, pid = servers.addresses[0], servers.pids[0]
        operator = operator_file.read_text().strip()
        rss: dict[str, float] = {}
        peaks: dict[str, float] = collections.defaultdict(float)
        phases: dict[str, float] = {}
        bystander = Bystander(address, args.seed)
        episode_before = bystander.episode(args.seed, 60)
        bystander.start()

        def watch(phase: str, seconds: float, until_done=None) -> None:
            """Let ``seconds`` pass (or until ``until_done()``), sampling the server's RSS as the phase's peak."""
            bystander.phase = phase
            began = time.monotonic()
            end = began + seconds
            while time.monotonic() < end and servers.running() and bystander.error is None:
                if until_done is not None and until_done():
                    break
                peaks[phase] = max(peaks[phase], memory_mib(pid).get("VmRSS", 0.0))
                time.sleep(0.1)
            phases[phase] = phases.get(phase, 0.0) + time.monotonic() - began

        watch("alone", args.baseline_s)
        rss["before"] = memory_mib(pid)["VmRSS"]

        bystander.phase = "starting"  # the workers' imports load this machine: not a figure of any phase
        results = ctx.Queue()
        load = Load(ctx, results)
        shares = [budget / args.fuzzers] * args.fuzzers if math.isinf(budget) else _shares(budget, args.fuzzers)
        for i, share in enumerate(shares):
            load.add("fuzz", fuzz_client, address, operator, args.seed, i, share)
        load.add("oversized", oversized, address, args.max_message_bytes)
        load.add("never_read", never_read, address, args.never_read_rate)
        load.add("reused_ids", reused_ids, address)
        load.start()
        fuzzers_done = lambda: len(load.reports["fuzz"]) == args.fuzzers  # noqa: E731

        def collect() -> bool:
            while True:
                try:
                    report = results.get_nowait()
                except queue.Empty:
                    return fuzzers_done()
                load.take(*report)

        watch("fuzz", fuzz_s, collect)
        load.finish(args.fuzzers + 3)
        rss["after fuzz"] = memory_mib(pid).get("VmRSS", math.nan)
        watch("settle", args.settle_s)
        rss["after settle"] = memory_mib(pid).get("VmRSS", math.nan)
        with AgentClient(address, operator=operator, timeout_s=30.0) as op:
            others = [w for w in op.list_worlds() if set(w["holders"].values()) != {"bystander"}]
        out["worlds_left"] = len(others)

        bystander.phase = "starting"
        attack = Load(ctx, results)
        attack.add("partial", partial, address, args.partial_bytes)
        attack.start()
        watch("partial", args.partial_s)
        rss["partial held"] = memory_mib(pid).get("VmRSS", math.nan)
        attack.finish(1)
        watch("after partial", 2.0)
        rss["after partial"] = memory_mib(pid).get("VmRSS", math.nan)

        bystander.stop()
        out["server_alive"] = servers.running()
        out["trajectory"] = {"episode_identical": None, "lockstep_identical": None, "lockstep_steps": 0}
        if bystander.error is None and out["server_alive"]:
            out["trajectory"] = {
                "episode_identical": bystander.episode(args.seed, 60) == episode_before,
                "lockstep_identical": bystander.lockstep_replay() == bystander.trajectory,
                "lockstep_steps": len(bystander.trajectory),
            }
        bystander.client.close()
        rss["peak VmHWM"] = memory_mib(pid).get("VmHWM", math.nan)
        out["rss_mib"] = rss
        out["rss_peak_mib"] = dict(peaks)
        out["phases_s"] = phases
        out["bystander"] = {"latency_ms": bystander.latency(), "error": bystander.error}
        out["fuzz"] = _fuzz_summary(load.reports["fuzz"], args.fuzzers)
        out["attackers"] = {kind: reports[0] for kind, reports in {**load.reports, **attack.reports}.items()
                            if kind != "fuzz" and reports}  # fmt: skip
    log = (logs / "server0.log").read_text(errors="replace")
    out["server_log"] = {
        "internal_errors": log.count("internal error while serving"),
        "tracebacks": log.count("Traceback"),
        "returncode": servers.procs[0].returncode,
        "tail": log[-2000:],
    }
    out["failures"] = failures(out)
    return out


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _fuzz_summary(reports: list[dict], expected: int) -> dict[str, Any]:
    codes: collections.Counter = collections.Counter()
    for report in reports:
        codes.update(report.get("codes", {}))
    return {
        "clients_reported": len(reports),
        "clients": expected,
        "sent": sum(r.get("sent", 0) for r in reports),
        "rounds": [r.get("rounds", 0) for r in reports],
        "by_code": dict(sorted(codes.items())),
        "internal": codes.get(vocabulary.INTERNAL, 0),
        "unanswered": sum(r.get("unanswered", 0) for r in reports),
        "late": sum(r.get("late", 0) for r in reports),
        "problems": dict(collections.Counter(p for r in reports for p in r.get("problems", []))),
        "examples": [e for r in reports for e in r.get("examples", [])][:EXAMPLES],
        "errors": [r["error"] for r in reports if r.get("error")],
    }


def failures(out: dict[str, Any]) -> list[str]:
    """What went wrong, in words; empty when the server held."""
    fuzz, attackers, found = out["fuzz"], out["attackers"], []
    if fuzz["clients_reported"] < fuzz["clients"] or fuzz["errors"]:
        found.append(f"fuzzing clients failed: {fuzz['errors'] or 'some never reported'}")
    found += [f"{n} fuzzed requests got: {p}" for p, n in fuzz["problems"].items()]
    for kind in ("oversized", "never_read", "reused_ids", "partial"):
        if kind not in attackers:
            found.append(f"the {kind} attacker never reported")
        elif "error" in attackers[kind]:
            found.append(f"the {kind} attacker failed: {attackers[kind]['error'].strip().splitlines()[-1]}")
    if attackers.get("oversized", {}).get("unexpected"):
        found.append(f"oversized messages got {collections.Counter(attackers['oversized']['unexpected'])}")
    if attackers.get("oversized", {}).get("recovered", 0) < attackers.get("oversized", {}).get("cut", 0):
        found.append("a connection cut for a too large frame did not recover")
    for kind in ("leaks", "denied"):
        if attackers.get("reused_ids", {}).get(kind):
            found.append(f"reused routing ids, {kind}: {attackers['reused_ids'][kind][:5]}")
    if not out["server_alive"] or out["server_log"]["returncode"] not in (0, None):
        found.append(f"the server died (status {out['server_log']['returncode']})")
    if out["server_log"]["internal_errors"]:
        found.append(f"the server logged {out['server_log']['internal_errors']} internal errors")
    if out["bystander"]["error"]:
        found.append(f"the bystander failed: {out['bystander']['error'].strip().splitlines()[-1]}")
    if out["trajectory"]["episode_identical"] is not True or out["trajectory"]["lockstep_identical"] is not True:
        found.append(f"the bystander's trajectory changed: {out['trajectory']}")
    return found


# ---- the report --------------------------------------------------------------------------------------------------


def markdown(out: dict[str, Any]) -> str:
    fuzz, attackers, rss, peak = out["fuzz"], out["attackers"], out["rss_mib"], out["rss_peak_mib"]
    over, never = attackers.get("oversized", {}), attackers.get("never_read", {})
    reused, held = attackers.get("reused_ids", {}), attackers.get("partial", {})
    codes = ", ".join(f"{code} {n:,}" for code, n in fuzz["by_code"].items())
    rows = [
        ("fuzz messages sent", f"{fuzz['sent']:,} by {fuzz['clients']} clients (rounds {fuzz['rounds']})"),
        ("replies by code", codes),
        ("`internal`", f"{fuzz['internal']}"),
        ("requests without a reply", f"{fuzz['unanswered']} ({fuzz['late']} answered late)"),
        ("improper replies", f"{sum(fuzz['problems'].values()) - fuzz['unanswered']}"),
        ("oversized", f"{sum(over.get('codes', {}).values())} messages of 2-4 frames of half the limit: "
         f"{dict(over.get('codes', {}))}; {over.get('cut', 0)} frames of limit + 1 B cut the connection, "
         f"{over.get('recovered', 0)} reconnected and were answered"),
        ("never-read client", f"{never.get('sent', 0):,} requests (act, render, observe; "
         f"{never.get('refused_sends', 0):,} sends pushed back); {never.get('replies_queued_here', 0)} replies had "
         "reached it when it stopped"),
        ("chosen routing ids", f"{reused.get('cycles', 0)} cycles, {reused.get('refused', 0)} refusals as due,"
         f" leaks {len(reused.get('leaks', []))}, wrong refusals {len(reused.get('denied', []))}"),
        ("partial multipart", f"raw ZMTP: {held.get('raw_wire_bytes', 0) / 2**20:.2f} MiB on the wire "
         f"({held.get('raw_frames', 0):,} empty frames flagged more"
         f"{', then the server closed the connection' if held.get('raw_cut_off') else ''}), server RSS "
         f"{rss['partial held'] - rss['after settle']:+.0f} MiB while held; libzmq DEALER: "
         f"{held.get('libzmq_bytes', 0) / 2**20:.2f} MiB, its own RSS "
         f"{held.get('own_rss_growth_mib', math.nan):+.0f} MiB"),
        ("server RSS MiB", f"before {rss['before']:.0f}, fuzz peak {peak.get('fuzz', math.nan):.0f}, after fuzz "
         f"{rss['after fuzz']:.0f}, after settle {rss['after settle']:.0f}; partial held {rss['partial held']:.0f},"
         f" after it {rss['after partial']:.0f}; VmHWM {rss['peak VmHWM']:.0f}"),
        ("worlds left after settle", f"{out['worlds_left']} (besides the bystander's)"),
    ]  # fmt: skip
    latency = out["bystander"]["latency_ms"]
    for kind in ("ping", "step"):
        cells = [
            f"{phase} {s['p50']:.2f} / {s['p99']:.2f} / {s['max']:.1f} (n={s['n']:,})"
            for phase in ("alone", "fuzz", "partial")
            if (s := latency.get(phase, {}).get(kind))
        ]
        rows.append((f"bystander {kind} ms p50 / p99 / max", "; ".join(cells)))
    trajectory = out["trajectory"]
    rows.append(("bystander trajectory", f"episode replay identical: {trajectory['episode_identical']}; lockstep "
                 f"world ({trajectory['lockstep_steps']:,} steps, under load) identical to an unloaded replay: "
                 f"{trajectory['lockstep_identical']}"))  # fmt: skip
    log = out["server_log"]
    rows.append(("server", f"alive {out['server_alive']}, exit status {log['returncode']}, "
                 f"{log['internal_errors']} internal errors logged"))  # fmt: skip
    rows.append(("verdict", "; ".join(out["failures"]) or "held"))
    return "\n".join(["| figure | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, help="fuzzed requests in all (default 50,000, or none with --seconds)")
    parser.add_argument("--seconds", type=float, help="fuzz for this long (with --messages: whichever comes first)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fuzzers", type=int, default=3, help="fuzzing client processes (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="the longest fuzz phase (default %(default)s)")
    parser.add_argument("--baseline-s", type=float, default=3.0, help="the bystander alone first (default %(default)s)")
    parser.add_argument(
        "--settle-s", type=float, default=12.0, help="then the bystander alone, till the load's sessions are forgotten"
    )
    parser.add_argument("--partial-bytes", type=int, default=4 << 20,
                        help="wire bytes of the unfinished messages (default %(default)s)")  # fmt: skip
    parser.add_argument("--partial-s", type=float, default=5.0, help="how long they are held (default %(default)s)")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20, help="the server's limit (default 1 MiB)")
    parser.add_argument(
        "--never-read-rate", type=float, default=300.0, help="requests/s of the never-read client (default 300)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.fuzzers < 1:
        parser.error("--fuzzers must be at least 1")
    out = run(args)
    print(markdown(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=str))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
