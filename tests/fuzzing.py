"""The fuzzing machinery shared by tests/test_envserver_fuzz.py (CI) and bench/fuzz_server.py (the long run).

A :class:`Context` holds worlds a fuzzing client owns and every seat of; ``Context.templates()`` gives well-formed
requests of every operation against them; :func:`mutations` and :func:`tampered_tables` derive bad messages from a
template; :func:`check_reply` says whether a reply is a proper answer (never ``internal``); :func:`tidy` undoes what
a fuzzed request created or closed, so that the next mutation still reaches past the world lookup.
:class:`ZmtpPeer` speaks ZeroMQ's wire protocol by hand, to send what libzmq itself never would.
"""

from __future__ import annotations

import collections
import math
import os
import random
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

from agora_marl.envserver.protocol import pack, vocabulary
from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"
#: The request id of the frames :func:`tampered_tables` builds (their header is sound, so the reply carries it).
TAMPERED_ID = 10**6

#: Values put where a field or a nested value is due: every msgpack type, the edges of the int range, and arrays.
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    math.nan,
    math.inf,
    "",
    "x" * 300,
    "all",
    "é",
    "\u2603\U0001f600" * 20,
    b"\x00\xff",
    [],
    [1, "a", None],
    [[1], [2, 3]],
    {},
    {"k": 1},
    {"k": {"deeper": [1, {"x": None}]}},
    np.array(5),
    np.zeros(3, np.float32),
    np.zeros((2, 3), np.int64),
    np.zeros(0, np.uint8),
    np.array([np.nan, 1.0]),
]


#: Values of the right type that a field may still not accept, tried besides WRONG_VALUES.
FIELD_VALUES: dict[str, list[Any]] = {
    "scenario": [
        "gymnasium:CartPole-v1",
        "gymnasium:this:X-v0",
        "gymnasium:unittest.__main__:X-v0",
        "gymnasium:os:X-v0",
        "gymnasium:a:b:c",
        "gymnasium:",
        "os:system",
        "mpe2.simple_spread_v3:__init__",
        "mpe2.simple_spread_v3:parallel_env\n",
        "foraging_v0",
        "no_such_world_v0",
        ":",
        "\x00",
    ],
    "layout": ["agents", "stacked", "diagonal"],
    "role": ["observer", "agent", "god"],
    "fill": ["random", "repeat", "explode"],
    "seats": ["all", "none", ["agent_0", "agent_0"], ["agent_9"]],
    "copies": [2, 4097],
    "deadline_ms": [1e-300, 3_600_001, -0.0],
    "seed": [2**32, 2**64 - 2],
    "secret": ["not-a-secret", "x" * 64, "sécret"],
    "operator": ["not-the-operator", "opérateur"],
    "observer_token": ["0" * 32, "é" * 32],
    "owner_token": ["é" * 32],
    "invite_token": ["é" * 32],
    "tokens": [{"agent_0": "é" * 32}],
    "group": ["ligue-é", "é"],
    "name": ["é" * 300],
}


class Context:
    """Worlds the fuzzing client owns and holds, rebuilt when a fuzzed request closed or left one."""

    def __init__(self, client: RawClient, operator: str):
        self.client = client
        self.operator = operator
        self.worlds: list[int] = []
        self.build()

    def build(self) -> None:
        for world in self.worlds:
            self.client.request({"op": "close", "world": world})  # it may be gone already: any reply will do
        create = {"op": "create", "scenario": SPREAD, "join": True, "deadline_ms": 20, "wait_for_seats": False}
        one = self.client.ok({**create, "seed": 0})
        box = self.client.ok({**create, "seed": 0, "config": {"continuous_actions": True}})
        batch = self.client.ok({**create, "seed": 1, "copies": 2})
        vector = self.client.ok({"op": "create", "scenario": "foraging_v0", "seed": 2, "copies": 2, "join": True})
        drawn = self.client.ok({**create, "seed": 3, "render": True})
        # A name of this context's own: several fuzzers share one server (bench/fuzz_server.py), and a name is its
        # creator's.
        self.league = f"fuzz-league-{os.urandom(4).hex()}"
        league = {"op": "create", "scenario": SPREAD, "seed": 4, "copies": 2, "group": self.league}
        grouped = self.client.ok({**league, "invite_only": ["agent_2"], "share_state": True, "deadline_ms": 20})
        self.invite_token = grouped["invite_token"]
        self.world, self.box, self.drawn = one["worlds"][0], box["worlds"][0], drawn["worlds"][0]
        self.observer_token = box["observer_token"]
        self.tokens = one["tokens"][0]
        self.owner_token = one["owner_token"]
        self.batch = batch["worlds"]
        self.vector = vector["worlds"]
        self.worlds = [self.world, self.box, self.drawn, *self.batch, *self.vector, *grouped["worlds"]]

    def templates(self) -> dict[str, list[dict]]:
        """Well-formed requests for each operation (each would succeed as it is), with the session secret as a field
        of its own, to be mutated like the others."""
        zeros_box = np.zeros(5, np.float32)
        templates = {
            "hello": [
                {"op": "hello", "name": "fuzz"},
                {"op": "hello", "name": "fuzz", "keep_alive_s": 5, "operator": self.operator, "secret": None},
            ],
            "ping": [{"op": "ping"}],
            "bye": [{"op": "bye"}],
            "list": [{"op": "list"}],
            "create": [
                {
                    "op": "create",
                    "scenario": SPREAD,
                    "config": {"max_cycles": 25, "local_ratio": 0.5},
                    "seed": 1,
                    "copies": 1,
                    "join": True,
                    "deadline_ms": 20,
                    "fill": "noop",
                    "auto_reset": True,
                    "wait_for_seats": False,
                },
                {"op": "create", "scenario": "foraging_v0", "config": {"size": 5}, "copies": 2, "join": True},
                {"op": "create", "scenario": SPREAD, "public": True, "render": True},
                {
                    "op": "create",
                    "scenario": SPREAD,
                    "group": "fuzz-new",
                    "invite_only": ["agent_0", "agent_*"],
                    "share_state": False,
                },
            ],
            "join": [
                {
                    "op": "join",
                    "world": self.world,
                    "seats": ["agent_0"],
                    "role": "agent",
                    "tokens": {"agent_0": self.tokens["agent_0"]},
                    "owner_token": self.owner_token,
                },
                {"op": "join", "world": self.box, "role": "observer", "observer_token": self.observer_token},
                {"op": "join", "world": self.world, "tokens": self.tokens, "takeover": False},
                {"op": "join", "world": self.world, "seats": "all", "invite_token": self.invite_token},
            ],
            "join_group": [
                {
                    "op": "join_group",
                    "group": self.league,
                    "seats": ["agent_2", "agent_*"],
                    "invite_token": self.invite_token,
                    "takeover": True,
                },
                {"op": "join_group", "group": self.league, "seats": "agent_1"},
            ],
            "leave": [{"op": "leave", "world": self.world, "seats": ["agent_0"]}],
            "close": [{"op": "close", "world": self.world}],
            "reset": [{"op": "reset", "world": self.world, "seed": 3, "options": {"k": [1, 2]}}],
            "observe": [{"op": "observe", "world": self.world}],
            "state": [{"op": "state", "world": self.vector[1]}],
            "act": [
                {"op": "act", "world": self.world, "actions": {"agent_0": 1, "agent_1": 2, "agent_2": 0}},
                {"op": "act", "world": self.box, "actions": {"agent_0": zeros_box, "agent_1": [0.5, 0, 0, 0, 1]}},
            ],
            "step_batch": [
                {
                    "op": "step_batch",
                    "worlds": list(self.batch),
                    "layout": "stacked",
                    "actions": np.zeros((2, 3), np.int64),
                    "state": True,
                },
                {
                    "op": "step_batch",
                    "worlds": list(self.batch),
                    "layout": "agents",
                    "actions": {"agent_0": [0, 1], "agent_1": np.ones(2, np.int64), "agent_2": [4, 4]},
                },
                {"op": "step_batch", "worlds": list(self.vector), "actions": {"agent_0": [5, 0], "agent_1": [1, 2]}},
            ],
            "reset_batch": [
                {"op": "reset_batch", "worlds": list(self.vector), "seed": 2, "layout": "agents", "state": False},
                {"op": "reset_batch", "worlds": list(self.batch), "seed": 2, "layout": "stacked", "state": True},
            ],
            "render": [{"op": "render", "world": self.drawn}],
            "act_batch": [
                {
                    "op": "act_batch",
                    "worlds": list(self.batch),
                    "actions": {"agent_0": [0, 1], "agent_1": np.ones(2, np.int64), "agent_2": [4, 4]},
                }
            ],
        }
        for op, variants in templates.items():
            if op not in vocabulary.SESSIONLESS:
                for message in variants:
                    message["secret"] = self.client.secret
        return templates


def _replace(message: dict, path: tuple, value: Any) -> dict:
    """A deep copy of ``message`` with the value at ``path`` (map keys and list indices) replaced."""
    out = _copy(message)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every nested position below the top-level fields: map values and list items."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield (*path, key)
            yield from _paths(sub, (*path, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield (*path, i)
            yield from _paths(sub, (*path, i))


def mutations(current: Callable[[], dict], rng: random.Random) -> Iterator[dict]:
    """Mutated copies of a request, one change each, then a few with two changes.

    ``current()`` gives the well-formed request as it is now (a fuzzed request may have closed its world, and the
    context then built a new one), so that every mutation still reaches past the world lookup.
    """
    first = current()
    fields = [k for k in first if k != "op"]
    yield {**current(), "extra_field": rng.choice(WRONG_VALUES)}
    for name in fields:
        yield {k: v for k, v in current().items() if k != name}
        for value in [*WRONG_VALUES, *FIELD_VALUES.get(name, [])]:
            yield {**current(), name: value}
        for path in _paths(first[name], (name,)):
            for value in rng.sample(WRONG_VALUES, 12):
                yield _replace(current(), path, value)
        if isinstance(first[name], dict):
            yield _replace(current(), (name, "extra_key"), rng.choice(WRONG_VALUES))
        if isinstance(first[name], list):
            yield {**current(), name: [*current()[name], rng.choice(WRONG_VALUES)]}
    for _ in range(4 * len(fields)):
        message = current()
        for name in rng.sample(fields, min(2, len(fields))):
            message[name] = rng.choice([*WRONG_VALUES, *FIELD_VALUES.get(name, [])])
        yield message


def tampered_tables(template: dict, request_id: int, rng: random.Random) -> Iterator[list]:
    """Frames of a request (with one array at least) whose ``arrays`` table lies in one way."""
    frames = pack({**template, "id": request_id, "probe": np.arange(4, dtype=np.int32)})
    header = msgpack.unpackb(frames[0])
    table = header["arrays"]

    def with_table(new_table: Any, tail: list | None = None) -> list:
        return [msgpack.packb({**header, "arrays": new_table}), *(frames[1:] if tail is None else tail)]

    for i, entry in enumerate(table):
        path, dtype, shape = entry
        for bad_dtype in (["float32"], {"a": 1}, 5, None, "object", "<f4"):
            yield with_table([*table[:i], [path, bad_dtype, shape], *table[i + 1 :]])
        for bad_shape in ([-1], [2**40], ["a"], [True], 3, [1] * 17):
            yield with_table([*table[:i], [path, dtype, bad_shape], *table[i + 1 :]])
        for bad_path in ([], [1], ["op"], ["id"], ["v"], ["world"], ["a"] * 9, [*path, "below"], "probe"):
            yield with_table([*table[:i], [bad_path, dtype, shape], *table[i + 1 :]])
        yield with_table([*table[:i], [path, dtype], *table[i + 1 :]])
    yield with_table(table, frames[1:-1])
    yield with_table(table, [*frames[1:], b"\x00" * 4])
    yield with_table({"0": table[0]})
    yield with_table([*table, rng.choice(table)])
    yield from _tampered_joined(template, request_id, rng)


def _tampered_joined(template: dict, request_id: int, rng: random.Random) -> Iterator[list]:
    """The same request joined (its arrays in one frame, at offsets), lying about the offsets or the frame."""
    frames = pack(
        {**template, "id": request_id, "probe": np.arange(4, dtype=np.int32), "probe2": np.ones(3)}, joined=True
    )
    header = msgpack.unpackb(frames[0])
    table, data = header["arrays"], bytes(memoryview(frames[1]).cast("B"))

    def with_table(new_table: Any, tail: list | None = None, **fields: Any) -> list:
        return [msgpack.packb({**header, "arrays": new_table, **fields}), *([data] if tail is None else tail)]

    for i, (path, dtype, shape, offset) in enumerate(table):
        for bad_offset in (-8, len(data), len(data) - 1, 2**64 - 1, 2**40, 1.5, True, None, "0", [offset]):
            yield with_table([*table[:i], [path, dtype, shape, bad_offset], *table[i + 1 :]])
        yield with_table([*table[:i], [path, dtype, shape], *table[i + 1 :]])
        yield with_table([*table[:i], [path, dtype, [*shape, 2**20], offset], *table[i + 1 :]])
    yield with_table(table, [data[: rng.randrange(len(data))]])
    yield with_table(table, [data, data])
    yield with_table(table, [])
    for bad in (1, 0, "true", None, [True]):
        yield with_table(table, joined=bad)


def reply_problem(reply: dict, op: str, request_id: int) -> str | None:
    """What is wrong with ``reply`` as the answer to a request of ``op`` sent as ``request_id``; None: nothing.

    A proper reply answers that id and is either the operation's success reply or an error whose code is in the
    protocol's table, is not ``internal``, and has a message and a hint.
    """
    if reply.get("id") != request_id:
        return f"answers request {reply.get('id')!r}, not {request_id}"
    if reply.get("op") == vocabulary.ERROR_OP:
        code = reply.get("code")
        if code not in vocabulary.ERROR_CODES:
            return f"error code {code!r} is not in the protocol"
        if code == vocabulary.INTERNAL:
            return "internal"
        if not (reply.get("message") and reply.get("hint")):
            return "an error without a message or a hint"
        return None
    if reply.get("op") != vocabulary.REQUESTS[op]:
        return f"reply op {reply.get('op')!r} to {op!r}, not {vocabulary.REQUESTS[op]!r}"
    return None


def reply_code(reply: dict) -> str:
    """The error code of a reply, or ``"ok"``."""
    return reply["code"] if reply.get("op") == vocabulary.ERROR_OP else "ok"


def check_reply(reply: dict, op: str, request_id: int, counts: collections.Counter, sent: Any) -> None:
    """Assert that ``reply`` properly answers ``sent`` (see :func:`reply_problem`) and count it by its code."""
    problem = reply_problem(reply, op, request_id)
    assert problem is None, (problem, sent, reply)
    counts[reply_code(reply)] += 1


def tidy(client: RawClient, context: Context, reply: dict) -> None:
    """Close what a fuzzed request created; rebuild the context when one closed or left its worlds, or ended the
    session (``bye``: a new session, new worlds)."""
    if reply["op"] == "created":
        for world in reply["worlds"]:
            client.ok({"op": "close", "world": world})
    elif reply["op"] == "bye":
        client.secret = client.ok({"op": "hello", "name": "fuzz", "secret": None})["secret"]
        context.build()
    elif reply["op"] in ("closed", "left"):
        context.build()


def variants(context: Context) -> list[tuple[str, Callable[[], dict]]]:
    """Every (operation, its current well-formed request) of the context's templates, in the protocol's order.

    The request is a function: a fuzzed request may have closed a world, and the context then built a new one.
    """
    counts = {op: len(requests) for op, requests in context.templates().items()}

    def current(op: str, variant: int) -> Callable[[], dict]:
        return lambda: context.templates()[op][variant]

    return [(op, current(op, i)) for op in vocabulary.REQUESTS for i in range(counts[op])]


class ZmtpPeer:
    """A DEALER spoken by hand over TCP (ZMTP 3.0, NULL security): frames go out exactly as given.

    libzmq keeps the frames of a multipart message in the sender's own queue until its last frame is sent, so a
    libzmq client cannot make a server hold an unfinished message; a peer that writes the wire format itself can.
    """

    def __init__(self, address: str, routing_id: bytes = b"", timeout_s: float = 10.0):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        self.socket = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
        self.bytes_sent = 0
        """Bytes written to the connection, the handshake included."""
        # Greeting: signature, version 3.0, mechanism NULL, not as-server, filler.
        self.send_raw(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32))
        self._read(64)
        properties = b"".join(
            bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
            for name, value in ((b"Socket-Type", b"DEALER"), (b"Identity", routing_id))
        )
        self._send_frame(b"\x05READY" + properties, flags=0x04)  # a command frame

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.socket.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    def _send_frame(self, data: bytes, flags: int) -> None:
        size = bytes([len(data)]) if len(data) < 256 else struct.pack(">Q", len(data))
        self.send_raw(bytes([flags | (0x02 if len(data) >= 256 else 0)]) + size + data)

    def send(self, data: bytes, more: bool) -> None:
        """Send one message frame, flagged "more" (another frame of the same message follows) or not."""
        self._send_frame(data, flags=0x01 if more else 0x00)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (frames already encoded, e.g. by :meth:`empty_frames`)."""
        self.socket.sendall(data)
        self.bytes_sent += len(data)

    @staticmethod
    def empty_frames(count: int) -> bytes:
        """``count`` empty frames flagged "more", encoded: two bytes on the wire each."""
        return b"\x01\x00" * count

    def recv(self) -> list[bytes]:
        """The frames of the next message (commands, such as the server's READY, are skipped)."""
        frames: list[bytes] = []
        while True:
            flags = self._read(1)[0]
            size = struct.unpack(">Q", self._read(8))[0] if flags & 0x02 else self._read(1)[0]
            data = self._read(size)
            if flags & 0x04:
                continue
            frames.append(data)
            if not flags & 0x01:
                return frames

    def close(self) -> None:
        self.socket.close()
