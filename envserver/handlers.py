"""One function per protocol operation, ``handler(server, session, message) -> reply | None``, and the table of them.

:data:`OPERATIONS` maps every request of the protocol (``vocabulary.REQUESTS``) to its handler; the server loop looks
the ``op`` up there. Each handler checks everything before it changes anything, so a refused request (a raised
ProtocolError) leaves the server as it was. ``None`` means the reply comes later (``act`` waits for its world to step).
The handlers reach the server through its public methods only; the server imports this module, never the reverse.

Longer than our ~400-line habit on purpose: it is the server's whole request surface, one handler per section of
docs/protocol.md in the document's order, and its checks are reviewed together (every refusal before any change).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from agora_marl import __version__, scenarios
from agora_marl.envserver.batch import BatchStepper
from agora_marl.envserver.protocol import WorldSpec, check_value, from_wire, to_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    AGENT,
    ALREADY_ACTED,
    BAD_ACTION,
    BAD_REQUEST,
    BAD_TOKEN,
    BATCH_MISMATCH,
    EPISODE_OVER,
    FILL_KINDS,
    FREE,
    HELD,
    LAYOUTS,
    LOST,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    OBSERVER,
    PROTOCOL_VERSION,
    REQUESTS,
    ROLES,
    SCENARIO_ERROR,
    SCENARIO_NOT_ALLOWED,
    SEAT_TAKEN,
    TOO_MANY_WORLDS,
)
from agora_marl.envserver.vector import CopyObs, CopyView, VectorGroup, VectorStepper
from agora_marl.envserver.world import World, WorldOptions

if TYPE_CHECKING:
    from agora_marl.envserver.server import EnvServer, Session

_REQUIRED = object()


def field(message: dict, name: str, kind: type | tuple, default: Any = _REQUIRED) -> Any:
    """``message[name]`` if it has the right type; ``default`` when absent; ``bad_request`` otherwise."""
    if name not in message:
        if default is _REQUIRED:
            raise ProtocolError(BAD_REQUEST, f"'{message['op']}' needs the field {name!r}", "see docs/protocol.md")
        return default
    value = message[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise ProtocolError(
            BAD_REQUEST, f"field {name!r} must be {names}, got {type(value).__name__}", "see docs/protocol.md"
        )
    return value


#: How deep a plain-data field (``config``, ``options``) may nest: deeper is refused before it is walked.
PLAIN_DEPTH = 32


def plain_field(message: dict, name: str, default: Any = _REQUIRED) -> Any:
    """``field(message, name, dict, default)`` whose every nested value is plain msgpack data, else ``bad_request``.

    Plain data is what a scenario's keyword config may hold: maps with string keys, lists, strings, ints, floats,
    booleans and nil, at most :data:`PLAIN_DEPTH` levels deep; never an array frame (the ``arrays`` table can put one
    at any path) nor bytes. Checked before anything is built with it.
    """
    value = field(message, name, dict, default)

    def where(path: tuple) -> str:
        return "/".join(str(p) for p in path)[:100]

    stack = [(value, (name,))]  # a loop, not recursion: a 1 MiB header can nest far past Python's recursion limit
    while stack:
        node, path = stack.pop()
        if len(path) > PLAIN_DEPTH:
            raise ProtocolError(BAD_REQUEST, f"field {where(path)!r} nests deeper than {PLAIN_DEPTH}", "flatten it")
        if isinstance(node, dict):
            for key, sub in node.items():
                if not isinstance(key, str):
                    raise ProtocolError(
                        BAD_REQUEST, f"field {where(path)!r} has a {type(key).__name__} key", "use string keys"
                    )
                stack.append((sub, (*path, key)))
        elif isinstance(node, list):
            stack.extend((sub, (*path, i)) for i, sub in enumerate(node))
        elif not (node is None or isinstance(node, bool | int | float | str)):
            kind = "an array" if isinstance(node, np.ndarray) else f"a {type(node).__name__}"
            raise ProtocolError(
                BAD_REQUEST,
                f"field {where(path)!r} is {kind}; it must be plain data",
                "send maps with string keys, lists, strings, numbers, booleans and nil only",
            )
    return value


def strings(values: Any, name: str) -> None:
    """``bad_request`` unless every one of ``values`` (a list's items, a map's keys or values) is a string."""
    for value in values:
        if not isinstance(value, str):
            raise ProtocolError(
                BAD_REQUEST, f"field {name!r} must hold strings, got a {type(value).__name__}", "see docs/protocol.md"
            )


def seed_field(message: dict) -> int | None:
    """The optional ``seed``: a non-negative int (gymnasium and numpy refuse negative seeds), else ``bad_request``."""
    seed = field(message, "seed", int, None)
    if seed is not None and seed < 0:
        raise ProtocolError(BAD_REQUEST, f"'seed' must be a non-negative int, got {seed}", "send a seed >= 0")
    return seed


def _owned(server: EnvServer, session: Session, message: dict) -> World:
    world = server.world(message.get("world"))
    if world.owner != session.identity:
        raise ProtocolError(NOT_OWNER, f"only the owner of world {world.world_id} may do that", "create your own world")
    return world


def _member(world: World, session: Session) -> bool:
    return world.owner == session.identity or any(w == world.world_id for w, _ in session.seats)


# ---- connection ---------------------------------------------------------------------------------------------


def op_hello(server: EnvServer, session: Session, message: dict) -> dict:
    session.name = str(field(message, "name", str, ""))[:200]
    config = server.config
    return {
        "op": "welcome",
        "server": "agora",
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "session": session.identity.hex(),
        "limits": {
            "max_message_bytes": config.max_message_bytes,
            "max_worlds_per_client": config.max_worlds_per_client,
            "heartbeat_timeout_s": config.heartbeat_timeout_s,
            "max_batch": config.max_batch,
        },
        "scenarios": sorted(scenarios.registered()),
        "allowed_packages": list(config.allowed_packages),
    }


def op_ping(server: EnvServer, session: Session, message: dict) -> dict:
    return {"op": "pong", "time": time.time()}


def op_list(server: EnvServer, session: Session, message: dict) -> dict:
    return {
        "op": "worlds",
        "worlds": [
            {
                "world": w.world_id,
                "scenario": w.spec["scenario"],
                "agents": w.agents,
                "seats": {a: s.state for a, s in w.seats.items()},
                "tick": w.tick,
                "episode": w.episode,
            }
            for w in server.worlds.values()
            if w.refresh() is None
        ],
    }


# ---- worlds -------------------------------------------------------------------------------------------------


def op_create(server: EnvServer, session: Session, message: dict) -> dict:
    config = server.config
    name = field(message, "scenario", str)
    scenario_config = plain_field(message, "config", {})
    seed = seed_field(message)
    copies = field(message, "copies", int, 1)
    join = field(message, "join", bool, False)
    deadline_ms = field(message, "deadline_ms", (int, float), config.default_deadline_ms)
    fill = field(message, "fill", str, "noop")
    auto_reset = field(message, "auto_reset", bool, True)
    wait_for_seats = field(message, "wait_for_seats", bool, not join)
    if not 1 <= copies <= config.max_batch:
        raise ProtocolError(BAD_REQUEST, f"'copies' must be 1..{config.max_batch}, got {copies}", "create in chunks")
    if not 0 < deadline_ms <= 3_600_000:
        raise ProtocolError(
            BAD_REQUEST, f"'deadline_ms' must be in (0, 3600000], got {deadline_ms}", "send milliseconds"
        )
    if fill not in FILL_KINDS:
        raise ProtocolError(
            BAD_REQUEST, f"'fill' must be one of {list(FILL_KINDS)}, got {fill!r:.40}", "see the step rule"
        )
    if len(session.owned) + copies > config.max_worlds_per_client:
        raise ProtocolError(
            TOO_MANY_WORLDS,
            f"this connection owns {len(session.owned)} worlds; {copies} more would pass the limit of "
            f"{config.max_worlds_per_client}",
            "close worlds you no longer use",
        )
    if len(server.worlds) + copies > config.max_worlds:
        raise ProtocolError(TOO_MANY_WORLDS, f"the server is at its limit of {config.max_worlds} worlds", "try later")
    try:
        scenarios.check_allowed(name, config.allowed_packages)
    except scenarios.ScenarioNotAllowed as exc:
        raise ProtocolError(SCENARIO_NOT_ALLOWED, str(exc), "ask the operator to --allow the package") from None
    group = None
    try:
        vectorise = join and copies >= 2 and auto_reset  # the batched training path; see envserver/vector.py
        vector = scenarios.make_vector(name, copies, scenario_config) if vectorise else None
        if vector is not None:
            group = VectorGroup(vector)
            group.last_obs = vector.reset(seed=seed)
            envs = [CopyView(group, i) for i in range(copies)]
            firsts = [(CopyObs(group, i), {}) for i in range(copies)]
        else:
            envs = [scenarios.make_env(name, scenario_config, config.allowed_packages) for _ in range(copies)]
            firsts = [env.reset(seed=None if seed is None else seed + i) for i, env in enumerate(envs)]
        spec = WorldSpec.of_env(name, scenario_config, envs[0])
        wire_spec = spec.to_wire()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a scenario's SystemExit too: it costs this request, never the server
        raise ProtocolError(
            SCENARIO_ERROR, f"building {name!r} failed: {type(exc).__name__}: {exc}", "check the scenario's config"
        ) from None
    spec_key = server.spec_key(wire_spec)
    options = WorldOptions(deadline_ms / 1000.0, fill, auto_reset, wait_for_seats)
    owner_token = secrets.token_hex(16)  # one for all the copies created together
    worlds = []
    for i, env in enumerate(envs):
        world = World(
            world_id=server.new_world_id(),
            env=env,
            spec=wire_spec,
            spec_key=spec_key,
            obs_spaces={a: env.observation_space(a) for a in spec.possible_agents},
            act_spaces={a: env.action_space(a) for a in spec.possible_agents},
            state_space=spec.state_space,
            options=options,
            owner=session.identity,
            owner_token=owner_token,
            seed=None if seed is None else seed + i,
        )
        world.obs, world.infos = firsts[i]
        if group is not None:
            world.group, world.index = group, i
            group.add(world)
        server.worlds[world.world_id] = world
        session.owned.add(world.world_id)
        worlds.append(world)
    reply = {
        "op": "created",
        "worlds": [w.world_id for w in worlds],
        "spec": wire_spec,
        "owner_token": owner_token,
    }
    if join:
        reply["tokens"] = [_take_all(world, session) for world in worlds]
        reply["obs"] = {
            str(w.world_id): {a: to_wire(w.obs_spaces[a], w.obs[a]) for a in w.agents if a in w.obs} for w in worlds
        }
    return reply


def _take_all(world: World, session: Session) -> dict[str, str]:
    tokens = {a: world.take_seat(a, session.identity) for a in world.agents}
    session.seats.update((world.world_id, a) for a in world.agents)
    return tokens


def op_join(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    role = field(message, "role", str, AGENT)
    tokens = field(message, "tokens", dict, {})
    owner_token = field(message, "owner_token", str, None)
    strings(tokens, "tokens")
    strings(tokens.values(), "tokens")
    if role not in ROLES:
        raise ProtocolError(BAD_REQUEST, f"'role' must be one of {list(ROLES)}, got {role!r:.40}", "see join")
    if owner_token is not None and owner_token != world.owner_token:
        raise ProtocolError(
            BAD_TOKEN, f"that is not the owner token of world {world.world_id}", "send the created reply's owner_token"
        )
    seats: list[str] = []
    if role == AGENT:
        requested = field(message, "seats", (list, str), list(tokens) if tokens else "all")
        if requested == "all":
            seats = [a for a, s in world.seats.items() if s.state == FREE or s.holder == session.identity]
        elif isinstance(requested, list):
            strings(requested, "seats")
            seats = requested
        else:
            raise ProtocolError(BAD_REQUEST, "'seats' must be a list of agents or \"all\"", "see join")
        for agent in seats:
            seat = world.seat(agent)
            token = tokens.get(agent)
            if token is not None and token != seat.token:
                raise ProtocolError(BAD_TOKEN, f"that is not the token of seat {agent!r}", "join without a token")
            if seat.state == HELD and seat.holder != session.identity and token is None:
                raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} is held by another client", "pick a free seat")
            if seat.state == LOST and token is None:
                raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} was lost by its holder", "reclaim it with its token")
        if len(set(seats)) != len(seats):
            raise ProtocolError(BAD_REQUEST, "'seats' names a seat twice", "name each seat once")
    # Checked: now change state. A takeover interrupts the previous holder's waiting request.
    world.refresh()
    granted = {}
    for agent in seats:
        seat = world.seats[agent]
        previous = seat.holder
        if previous is not None and previous != session.identity:
            for identity, header in world.cancel_waiters(f"seat {agent!r} was taken over with its token", previous):
                server.send(identity, header)
            old = server.sessions.get(previous)
            if old:
                old.seats.discard((world.world_id, agent))
        granted[agent] = world.take_seat(agent, session.identity)
        session.seats.add((world.world_id, agent))
    if owner_token is not None:
        previous_owner = server.sessions.get(world.owner) if world.owner is not None else None
        if previous_owner is not None:
            previous_owner.owned.discard(world.world_id)
        world.owner = session.identity
        session.owned.add(world.world_id)
    if role == OBSERVER:
        world.observers.add(session.identity)
    server.try_step(world)
    shown = seats if role == AGENT else world.agents
    return {
        "op": "joined",
        "world": world.world_id,
        "seats": granted,
        "spec": world.spec,
        "tick": world.tick,
        "episode": world.episode,
        "agents": world.live_agents,
        "obs": {a: to_wire(world.obs_spaces[a], world.obs[a]) for a in shown if a in world.obs},
    }


def op_leave(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    mine = world.held_by(session.identity)
    seats = field(message, "seats", list, mine)
    strings(seats, "seats")
    for agent in seats:
        world.seat(agent)
        if agent not in mine:
            raise ProtocolError(NOT_YOUR_SEAT, f"you do not hold seat {agent!r}", f"you hold {mine}")
    for identity, header in world.cancel_waiters("you left the world", session.identity):
        server.send(identity, header)
    for agent in seats:
        world.release_seat(agent, lost=False)
        session.seats.discard((world.world_id, agent))
    world.observers.discard(session.identity)
    if not server.close_if_abandoned(world):
        server.try_step(world)
    return {"op": "left", "world": world.world_id, "seats": seats}


def op_close(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    server.close_world(world, "its owner closed it")
    return {"op": "closed", "world": world.world_id}


def op_reset(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    if world.group is not None:
        raise world.group.refuse_single(world.world_id)
    seed = seed_field(message)
    options = plain_field(message, "options", None)
    for identity, header in world.cancel_waiters("the owner reset the world"):
        server.send(identity, header)
    try:
        world.reset(seed=seed, options=options)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ProtocolError(
            SCENARIO_ERROR, f"reset raised {type(exc).__name__}: {exc}", "check the seed/options"
        ) from None
    world.episode += 1
    return world.observation_reply(world.live_agents)


def op_observe(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if world.owner == session.identity or session.identity in world.observers:
        return world.observation_reply(world.live_agents)
    mine = world.held_by(session.identity)
    if not mine:
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    return world.observation_reply(mine)


def op_state(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not (_member(world, session) or session.identity in world.observers):
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    world.refresh()
    return {"op": "state", "world": world.world_id, "tick": world.tick, "state": world.state()}


# ---- stepping -----------------------------------------------------------------------------------------------


def op_act(server: EnvServer, session: Session, message: dict) -> None:
    world = server.world(message.get("world"))
    if world.group is not None:
        raise world.group.refuse_single(world.world_id)
    actions = field(message, "actions", dict)
    strings(actions, "actions")
    if not actions:
        raise ProtocolError(BAD_REQUEST, "'actions' is empty", "send {agent: action} for the seats you hold")
    if world.episode_over:
        raise ProtocolError(EPISODE_OVER, f"the episode of world {world.world_id} is over", "the owner must reset it")
    checked = {}
    for agent, value in actions.items():
        seat = world.seat(agent)
        if seat.holder != session.identity:
            raise ProtocolError(NOT_YOUR_SEAT, f"you do not hold seat {agent!r}", "join the seat first")
        if agent in world.pending or any(agent in w.seats for w in world.waiters):
            raise ProtocolError(ALREADY_ACTED, f"seat {agent!r} already acted this tick", "wait for the step reply")
        space = world.act_spaces[agent]
        try:
            checked[agent] = from_wire(space, check_value(space, value, (), f"actions/{agent}"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(BAD_ACTION, str(exc), f"a valid action of seat {agent!r} is in {space}") from None
    world.submit(session.identity, message["id"], checked, time.monotonic())
    server.try_step(world)
    return None


def _batch(server: EnvServer, session: Session, message: dict) -> BatchStepper:
    ids = field(message, "worlds", list)
    if not all(type(i) is int for i in ids):  # before any comparison: `True == 1` in Python
        raise ProtocolError(BAD_REQUEST, "'worlds' must list world ids (ints)", "see list")
    layout = field(message, "layout", str, "agents")
    with_state = field(message, "state", bool, False)
    if not 1 <= len(ids) <= server.config.max_batch:
        raise ProtocolError(BAD_REQUEST, f"'worlds' must list 1..{server.config.max_batch} worlds", "split the batch")
    if layout not in LAYOUTS:
        raise ProtocolError(
            BAD_REQUEST, f"'layout' must be one of {list(LAYOUTS)}, got {layout!r:.40}", "see step_batch"
        )
    group = server.world(ids[0]).group
    if group is not None:
        # A vector group is checked as a whole: one list comparison instead of K lookups.
        if not group.intact or ids != group.world_ids:
            raise ProtocolError(
                BATCH_MISMATCH,
                "vector-backed worlds step only as their whole group, in order",
                f"send worlds {group.world_ids}" if group.intact else "a world of this group was closed",
            )
        if group.sole_holder() != session.identity:
            raise ProtocolError(BATCH_MISMATCH, "you do not hold every seat of these worlds", "create with join: true")
        return VectorStepper(group, layout, with_state)  # its worlds share spec and options by construction
    worlds = [server.world(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ProtocolError(BATCH_MISMATCH, "'worlds' lists a world twice", "list each world once")
    key = worlds[0].spec_key
    for world in worlds:
        if world.sole_holder() != session.identity:
            raise ProtocolError(
                BATCH_MISMATCH, f"you do not hold every seat of world {world.world_id}", "create with join: true"
            )
        if world.group is not None:
            raise ProtocolError(
                BATCH_MISMATCH,
                "vector-backed worlds step only as their whole group",
                f"send worlds {world.group.world_ids}",
            )
        if world.spec_key != key:
            raise ProtocolError(
                BATCH_MISMATCH,
                f"world {world.world_id} has another spec than world {ids[0]}",
                "batch worlds of one spec",
            )
        if not world.options.auto_reset:
            raise ProtocolError(BATCH_MISMATCH, f"world {world.world_id} does not auto-reset", "create it with it")
        if world.waiters:  # a batch would step or reset under it, and the act would wait on a tick that never comes
            raise ProtocolError(
                ALREADY_ACTED, f"world {world.world_id} has an act waiting for its step", "wait for the step reply"
            )
    return BatchStepper(worlds, layout, with_state)


def _batch_failed(server: EnvServer, stepper: BatchStepper, doing: str, exc: BaseException) -> ProtocolError:
    """A scenario raised in the middle of a batch: some worlds may have moved and some not, so all of them close."""
    ids = [w.world_id for w in stepper.worlds]
    where = f"world {stepper.current.world_id}" if stepper.current is not None else "the batch"
    for world in stepper.worlds:
        server.close_world(world, f"a world of its batch raised while {doing}")
    return ProtocolError(
        SCENARIO_ERROR,
        f"{where} raised while {doing}: {type(exc).__name__}: {exc}; every world of the batch ({ids}) is closed",
        "create the worlds again",
    )


def op_step_batch(server: EnvServer, session: Session, message: dict) -> dict:
    stepper = _batch(server, session, message)
    actions = stepper.check_actions(message.get("actions"))
    try:
        reply = stepper.step(actions)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise _batch_failed(server, stepper, "stepping", exc) from None
    server.stats["steps"] += len(stepper.worlds)
    return reply


def op_reset_batch(server: EnvServer, session: Session, message: dict) -> dict:
    stepper = _batch(server, session, message)
    seed = seed_field(message)
    try:
        return stepper.reset(seed)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise _batch_failed(server, stepper, "resetting", exc) from None


#: Every operation's handler, by the ``op`` of its request.
OPERATIONS: dict[str, Callable[[EnvServer, Session, dict], dict | None]] = {
    "hello": op_hello,
    "ping": op_ping,
    "list": op_list,
    "create": op_create,
    "join": op_join,
    "leave": op_leave,
    "close": op_close,
    "reset": op_reset,
    "observe": op_observe,
    "state": op_state,
    "act": op_act,
    "step_batch": op_step_batch,
    "reset_batch": op_reset_batch,
}
assert set(OPERATIONS) == set(REQUESTS), "every request of the protocol has exactly one handler"
