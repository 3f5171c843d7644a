"""Checks of sessions and messages: hello and welcome, ping, secrets, and the refusals of what is not a request
(docs/protocol.md, 'Frames', 'Sessions', 'hello', 'error')."""

from __future__ import annotations

import math

import msgpack

from agora_marl.agents.conformance.base import QUIET_S, Context, check
from agora_marl.agents.conformance.checks_worlds import agents_of
from agora_marl.agents.conformance.peer import Skip, expect, short
from agora_marl.envserver.protocol.vocabulary import (
    BAD_MESSAGE,
    BAD_REQUEST,
    BAD_VERSION,
    NO_SESSION,
    NOT_ALLOWED,
    PROTOCOL_VERSION,
    TOO_LARGE,
    UNKNOWN_OP,
    UNKNOWN_WORLD,
)

#: The largest ``max_message_bytes`` the too_large check sends a message over (it sends one that big).
MAX_TESTED_MESSAGE_BYTES = 64 << 20

_LIMITS = {
    "max_message_bytes": int,
    "max_worlds_per_client": int,
    "heartbeat_timeout_s": (int, float),
    "max_keep_alive_s": (int, float),
    "max_batch": int,
    "max_unread_bytes": int,
}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@check
def check_welcome(ctx: Context) -> None:
    """hello gets a welcome with protocol 2, a secret, the limits and the scenarios; each hello a new secret"""
    a = ctx.peer("a", hello=False)
    welcome = a.hello()
    expect(
        welcome.get("protocol") == PROTOCOL_VERSION, f"welcome.protocol should be {PROTOCOL_VERSION}: {short(welcome)}"
    )
    for key in ("server", "version", "session", "secret"):
        expect(isinstance(welcome.get(key), str), f"welcome.{key} should be a string: {short(welcome)}")
    expect(welcome["session"] != welcome["secret"], "welcome.session (safe to show) must not be the secret")
    expect(
        welcome.get("operator") is False,
        f"welcome.operator should be false without an operator secret: {short(welcome)}",
    )
    expect(_is_number(welcome.get("keep_alive_s")), f"welcome.keep_alive_s should be a number: {short(welcome)}")
    limits = welcome.get("limits")
    expect(isinstance(limits, dict), f"welcome.limits should be a map: {short(welcome)}")
    for key, kind in _LIMITS.items():
        value = limits.get(key)
        expect(isinstance(value, kind) and not isinstance(value, bool), f"welcome.limits.{key} is {value!r}")
    for key in ("scenarios", "allowed_packages"):
        value = welcome.get(key)
        expect(isinstance(value, list) and all(isinstance(s, str) for s in value), f"welcome.{key}: {value!r}")
    b = ctx.peer("b")
    expect(b.secret != a.secret, "two hellos got the same secret: a secret must be the session's own")
    expect(b.welcome["session"] != welcome["session"], "two sessions got the same session name")
    first = a.secret
    second = a.hello()  # on the same connection, without a secret: a second session
    expect(second["secret"] != first, "a hello without a secret on a connection that has a session opened none")
    a.ok("list", secret=first)  # both sessions live on the one connection
    a.ok("list", secret=second["secret"])


@check
def check_hello_renew(ctx: Context) -> None:
    """hello with the session's secret renews it and returns the same secret; another connection keeps the session"""
    a = ctx.peer("a")
    again = a.ok("hello", session=False, name="renewed", secret=a.secret)
    expect(
        again.get("secret") == a.secret, f"hello with the secret should return it again, got {again.get('secret')!r}"
    )
    created = a.create(join=True, seed=0)
    world = created["worlds"][0]
    moved = ctx.peer("a2", hello=False)
    moved.secret = a.secret  # a reconnecting client: a new socket, the old secret
    listing = moved.ok("list")
    ids = [w.get("world") for w in listing.get("worlds", [])]
    expect(world in ids, f"the session's world {world} is missing from list over a new connection: {ids}")
    observed = moved.ok("observe", world=world)
    expect(set(observed.get("obs", {})) == set(created["tokens"][0]), "the session's seats did not follow its secret")
    # A renew may change how the arrays of the replies travel (frames).
    worlds = a.create(join=True, seed=0, copies=2)["worlds"]
    for frames, joined in (("joined", True), ("separate", False)):
        a.ok("hello", session=False, secret=a.secret, frames=frames)
        request = a.send("reset_batch", worlds=worlds)
        a.answer("reset_batch", request)
        count = a.frame_counts[request]
        expect((count == 2) == joined, f"after a renew with frames {frames!r}, a reset_batch came in {count} frames")


@check
def check_keep_alive(ctx: Context) -> None:
    """keep_alive_s is granted within [heartbeat_timeout_s, max_keep_alive_s]; a negative or NaN one is bad_request"""
    a = ctx.peer("a", keep_alive_s=1e9)
    limits = a.welcome["limits"]
    granted = a.welcome.get("keep_alive_s")
    expect(
        _is_number(granted) and limits["heartbeat_timeout_s"] <= granted <= limits["max_keep_alive_s"],
        f"asked for 1e9 s, granted {granted!r}; limits {limits}",
    )
    for bad in (-1.0, math.nan):
        a.refused("hello", BAD_REQUEST, "keep_alive_s must be >= 0", session=False, keep_alive_s=bad)


@check
def check_ping(ctx: Context) -> None:
    """ping needs no session and gets pong with the server's time; with a secret it is answered too"""
    a = ctx.peer("a", hello=False)
    pong = a.ok("ping")
    expect(_is_number(pong.get("time")), f"pong.time should be a number (seconds): {short(pong)}")
    a.hello()
    a.ok("ping")


@check
def check_no_session(ctx: Context) -> None:
    """every request but hello and ping without a secret, or with a wrong one, gets no_session (one that is not a
    string: bad_request)"""
    a = ctx.peer("a")
    wrong = "not-a-secret-" + a.secret[::-1]
    requests = {
        "list": {},
        "create": {"scenario": ctx.scenario, "join": True},
        "join": {"world": 1},
        "leave": {"world": 1},
        "close": {"world": 1},
        "reset": {"world": 1},
        "observe": {"world": 1},
        "state": {"world": 1},
        "render": {"world": 1},
        "act": {"world": 1, "actions": {"agent_0": 0}},
        "step_batch": {"worlds": [1], "actions": {}},
        "reset_batch": {"worlds": [1]},
        "act_batch": {"worlds": [1], "actions": {}},
        "join_group": {"group": "g", "seats": "all"},
        "bye": {},
    }
    for op, fields in requests.items():
        a.refused(op, NO_SESSION, "it carries no secret", session=False, **fields)
        a.refused(op, NO_SESSION, "its secret is not one the server issued", secret=wrong, **fields)
        a.refused(
            op, BAD_REQUEST, "a secret of another type than string is a field of the wrong type", secret=5, **fields
        )
    listing = a.ok("list")
    private = [w for w in listing.get("worlds", []) if not w.get("public")]
    expect(not private, f"a create refused with no_session made a world this session sees: {short(private)}")


@check
def check_bad_version(ctx: Context) -> None:
    """a header whose v is not 2 (1, 3, true, "2", missing) gets bad_version with the request's id"""
    a = ctx.peer("a", hello=False)
    for version in (1, 3, True, "2", PROTOCOL_VERSION + 100):
        request_id = next(ctx.ids)
        a.send_header({"v": version, "op": "ping", "id": request_id}, what=f"ping with v={version!r}")
        a.refusal(f"ping with v={version!r}", request_id, BAD_VERSION)
    request_id = next(ctx.ids)
    a.send_header({"op": "ping", "id": request_id}, what="ping without v")
    a.refusal("ping without v", request_id, BAD_VERSION, "a header without v")
    a.ok("ping")


def _with_arrays(request_id: int, table) -> dict:
    return {"v": PROTOCOL_VERSION, "op": "ping", "id": request_id, "arrays": table}


@check
def check_bad_message(ctx: Context) -> None:
    """frames that are not an agora message (not msgpack, not a map, bad arrays tables) get bad_message"""
    a = ctx.peer("a", hello=False)
    unreadable = {"not msgpack": b"\xc1\xc1", "not a map": msgpack.packb([1, 2, 3]), "empty header": b""}
    for what, header in unreadable.items():
        a.send_frames([header], 0, what)
        a.refusal(what, 0, BAD_MESSAGE, "a header that cannot be read is answered with id 0")
    four = bytes(4)
    tables = {
        "an unknown dtype": ([[["x"], "float128", [1]]], [bytes(16)]),
        "a dtype that is a list": ([[["x"], ["float32"], [1]]], [four]),
        "a negative shape": ([[["x"], "float32", [-1]]], [four]),
        "a path with a non-string key": ([[["x", 5], "float32", [1]]], [four]),
        "an entry that is not [path, dtype, shape]": ([[["x"], "float32"]], [four]),
        "a frame of the wrong size": ([[["x"], "float32", [2]]], [four]),
        "more entries than frames": ([[["x"], "float32", [1]]], []),
        "more frames than entries": ([], [four]),
        "arrays that is not a list": ("x", []),
        "a joined entry without its offset": ([[["x"], "float32", [1]]], [four], True),
        "a joined offset past the frame's end": ([[["x"], "float32", [1], 4]], [four], True),
        "joined with two array frames": ([[["x"], "float32", [1], 0], [["y"], "float32", [1], 0]], [four, four], True),
        "joined that is not a bool": ([[["x"], "float32", [1], 0]], [four], 1),
    }
    for what, (table, frames, *joined) in tables.items():
        request_id = next(ctx.ids)
        header = _with_arrays(request_id, table) | ({"joined": joined[0]} if joined else {})
        a.send_frames([msgpack.packb(header), *frames], request_id, what)
        a.refusal(what, request_id, BAD_MESSAGE, "the refusal carries the readable header's id")
    a.ok("ping")  # and the server keeps serving this very connection


@check
def check_unknown_op(ctx: Context) -> None:
    """a request whose op names no operation (or names a reply) gets unknown_op, with a secret or without"""
    a = ctx.peer("a")
    for op in ("frobnicate", "welcome", "step", ""):
        a.refused(op, UNKNOWN_OP)
        a.refused(op, UNKNOWN_OP, "the op is checked before the session", session=False)


@check
def check_bad_request(ctx: Context) -> None:
    """fields of the wrong type or out of range get bad_request and change nothing"""
    a = ctx.peer("a")
    world = a.create(join=True, seed=0)["worlds"][0]
    scenario = ctx.scenario
    creates = {
        "a scenario that is not a string": {"scenario": 5},
        "copies 0": {"scenario": scenario, "copies": 0},
        "a negative seed": {"scenario": scenario, "seed": -1},
        "an unknown fill": {"scenario": scenario, "fill": "sideways"},
        "deadline_ms 0": {"scenario": scenario, "deadline_ms": 0},
        "bytes in config": {"scenario": scenario, "config": {"x": b"\x00"}},
        "render_mode human": {"scenario": scenario, "config": {"render_mode": "human"}},
        "join that is not a bool": {"scenario": scenario, "join": "yes"},
    }
    for what, fields in creates.items():
        a.refused("create", BAD_REQUEST, what, **fields)
    a.refused("join", BAD_REQUEST, "world must be an int", world="one")
    a.refused("observe", BAD_REQUEST, "world must be an int", world=[world])
    a.refused("join", BAD_REQUEST, "role must be agent or observer", world=world, role="referee")
    a.refused("act", BAD_REQUEST, "actions must be a map", world=world, actions=[0])
    a.refused("step_batch", BAD_REQUEST, "worlds must list ints", worlds="all", actions={})
    listing = a.ok("list")
    private = sorted(w.get("world") for w in listing.get("worlds", []) if not w.get("public"))
    expect(private == [world], f"refused creates made worlds: this session now sees {private}, not [{world}]")


@check
def check_unknown_world(ctx: Context) -> None:
    """requests naming a world that does not exist get unknown_world"""
    a = ctx.peer("a")
    world = a.create(join=False)["worlds"][0]
    a.ok("close", world=world)  # a world id that surely is no longer live
    for op, fields in {
        "observe": {},
        "join": {},
        "state": {},
        "close": {},
        "act": {"actions": {"agent_0": 0}},
        "render": {},
    }.items():
        a.refused(op, UNKNOWN_WORLD, f"world {world} was closed", world=world, **fields)


@check
def check_too_large(ctx: Context) -> None:
    """a message over limits.max_message_bytes gets too_large with its id; one frame over it closes the connection
    without a reply (skipped if the limit is too large)"""
    a = ctx.peer("a")
    limit = a.welcome["limits"]["max_message_bytes"]
    if limit > MAX_TESTED_MESSAGE_BYTES:
        raise Skip(f"max_message_bytes is {limit}; the check sends messages of at most {MAX_TESTED_MESSAGE_BYTES}")
    request_id = next(ctx.ids)
    # A valid ping whose one frame fits the limit but whose header takes the message over it.
    header = _with_arrays(request_id, [[["pad"], "uint8", [limit]]])
    a.send_frames([msgpack.packb(header), bytes(limit)], request_id, f"a message of {limit}+ bytes")
    a.refusal("an oversized message", request_id, TOO_LARGE, f"the limit is {limit} bytes")
    request_id = next(ctx.ids)
    header = _with_arrays(request_id, [[["pad"], "uint8", [limit + 1]]])
    a.send_frames([msgpack.packb(header), bytes(limit + 1)], request_id, f"a frame of {limit + 1} bytes")
    a.quiet(request_id, QUIET_S, "a single frame over the limit closes the connection without a reply")
    ctx.peer("b", hello=False).ok("ping")


@check
def check_error_replies(ctx: Context) -> None:
    """every error reply has code, message and hint, and echoes the request's id, whatever int it is"""
    a = ctx.peer("a")
    for request_id in (0, -1, 7, 2**40, -(2**40), 2**63 - 1):
        a.refusal("observe", a.send("observe", request_id=request_id, world="x"), BAD_REQUEST)
        a.refusal("frobnicate", a.send("frobnicate", request_id=request_id), UNKNOWN_OP)
        a.send_header({"v": 0, "op": "ping", "id": request_id})
        a.refusal("ping with v=0", request_id, BAD_VERSION)
    # Several requests in flight at once are answered each with its own id, whatever the order.
    ids = [a.send("observe", world=f"w{i}") for i in range(8)]
    for request_id in reversed(ids):
        a.refusal("observe", request_id, BAD_REQUEST)


@check
def check_operator_refused(ctx: Context) -> None:
    """hello with a wrong operator secret gets not_allowed"""
    a = ctx.peer("a", hello=False)
    a.refused("hello", NOT_ALLOWED, "that is not the operator secret", operator="not-the-operator-secret")


@check
def check_operator(ctx: Context) -> None:
    """an operator session lists and observes every world (skipped without the operator secret)"""
    if not ctx.operator:
        raise Skip("no operator secret given (--operator, or a connection file that holds it)")
    owner = ctx.peer("owner")
    world = owner.create(join=True, seed=0)["worlds"][0]
    op = ctx.peer("operator", operator=ctx.operator)
    expect(op.welcome.get("operator") is True, f"welcome.operator should be true: {short(op.welcome)}")
    ids = [w.get("world") for w in op.ok("list").get("worlds", [])]
    expect(world in ids, f"the operator's list lacks another session's private world {world}: {ids}")
    observed = op.ok("observe", world=world)
    expect(set(observed.get("obs", {})) == set(observed.get("agents", [])), "the operator should see every agent")
    op.ok("join", world=world, role="observer")


@check
def check_bye(ctx: Context) -> None:
    """bye ends the session at once: its secret gets no_session, its seats are free, a world nobody else holds closes"""
    a, b = ctx.peer("a"), ctx.peer("b")
    alone = a.create(join=True, seed=0)["worlds"][0]
    shared = a.create(join=True, seed=1, public=True)
    world, seat = shared["worlds"][0], agents_of(shared["spec"], at_least=2)[0]
    b.ok("join", world=world, tokens={seat: shared["tokens"][0][seat]})
    a.ok("bye")
    a.refused("list", NO_SESSION, "the session ended with bye")
    b.refused("observe", UNKNOWN_WORLD, "a world nobody else held closed with bye", world=alone)
    entry = next((w for w in b.ok("list").get("worlds", []) if w.get("world") == world), None)
    expect(entry is not None, f"world {world}, where b holds a seat, should stay after a's bye")
    others = [state for agent, state in entry.get("seats", {}).items() if agent != seat]
    expect(others and all(state == "free" for state in others), f"a's seats should be free after bye: {short(entry)}")
    b.ok("leave", world=world)  # the world has no owner and no holder now: it closes
    a.created = []
