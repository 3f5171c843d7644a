"""One function per protocol operation, ``handler(server, session, message) -> reply | None``, and the table of them.

:data:`OPERATIONS` maps every request of the protocol (``vocabulary.REQUESTS``) to its handler; the server loop looks
the ``op`` up there. Each handler checks everything before it changes anything, so a refused request (a raised
ProtocolError) leaves the server as it was. ``None`` means the reply comes later (``act`` waits for its world to step).
The handlers reach the server through its public methods only; the server imports this module, never the reverse.

The stepping requests (``act``, ``step_batch``, ``reset_batch``) live in stepping.py, ``act_batch`` in partial.py,
``create`` in creation.py; reading fields in fields.py.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agora_marl import __version__, scenarios
from agora_marl.envserver.creation import op_create
from agora_marl.envserver.fields import field, plain_field, seed_field, strings
from agora_marl.envserver.partial import op_act_batch
from agora_marl.envserver.protocol import to_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    AGENT,
    BAD_REQUEST,
    BAD_TOKEN,
    FREE,
    HELD,
    LOST,
    NOT_ALLOWED,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    OBSERVER,
    PROTOCOL_VERSION,
    REQUESTS,
    ROLES,
    SCENARIO_ERROR,
    SEAT_TAKEN,
)
from agora_marl.envserver.stepping import op_act, op_reset_batch, op_step_batch
from agora_marl.envserver.world import World

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer


def _owned(server: EnvServer, session: Session, message: dict) -> World:
    world = server.world(message.get("world"))
    if world.owner != session.identity:
        raise ProtocolError(NOT_OWNER, f"only the owner of world {world.world_id} may do that", "create your own world")
    return world


def _member(world: World, session: Session) -> bool:
    return world.owner == session.identity or any(w == world.world_id for w, _ in session.seats)


def _may_watch(world: World, session: Session) -> bool:
    """Whether the session may read the whole world (every agent's observations, its frames): its owner, an
    observer the owner admitted, an operator, anyone for a public world."""
    return world.public or session.operator or world.owner == session.identity or session.identity in world.observers


def _visible(world: World, session: Session) -> bool:
    """Whether ``list`` shows the world to the session."""
    return _may_watch(world, session) or _member(world, session)


# ---- connection ---------------------------------------------------------------------------------------------


def op_hello(server: EnvServer, session: Session | None, message: dict) -> dict:
    """Open a session (or, with its ``secret``, renew one): the secret it returns authorises every later request."""
    name = str(field(message, "name", str, ""))[:200]
    config = server.config
    keep_alive = field(message, "keep_alive_s", (int, float), None)
    operator = field(message, "operator", str, None)
    if keep_alive is not None and not keep_alive >= 0:  # NaN too
        raise ProtocolError(BAD_REQUEST, f"'keep_alive_s' must be >= 0, got {keep_alive}", "send seconds, or omit it")
    if operator is not None and not secrets.compare_digest(operator.encode(), server.operator_secret.encode()):
        raise ProtocolError(
            NOT_ALLOWED, "that is not this server's operator secret", "read it from the server's operator file"
        )
    if session is None:
        session = server.new_session()
    session.name = name
    session.operator = session.operator or operator is not None
    if keep_alive is not None:
        # Never shorter than the server's own timeout, never longer than the operator allows.
        session.keep_alive_s = min(max(float(keep_alive), config.heartbeat_timeout_s), config.max_keep_alive_s)
    return {
        "op": "welcome",
        "server": "agora",
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "session": session.label,
        "secret": session.secret,
        "operator": session.operator,
        "keep_alive_s": session.keep_alive_s if session.keep_alive_s is not None else config.heartbeat_timeout_s,
        "limits": {
            "max_message_bytes": config.max_message_bytes,
            "max_worlds_per_client": config.max_worlds_per_client,
            "heartbeat_timeout_s": config.heartbeat_timeout_s,
            "max_keep_alive_s": config.max_keep_alive_s,
            "max_batch": config.max_batch,
        },
        "scenarios": sorted(scenarios.registered()),
        "allowed_packages": list(config.allowed_packages),
    }


def op_ping(server: EnvServer, session: Session | None, message: dict) -> dict:
    return {"op": "pong", "time": time.time()}


def op_list(server: EnvServer, session: Session, message: dict) -> dict:
    now = time.monotonic()
    worlds = []
    for w in server.worlds.values():
        if not _visible(w, session):
            continue
        w.refresh()
        holders = {a: server.holder_name(s.holder) for a, s in w.seats.items()}
        entry = {
            "world": w.world_id,
            "scenario": w.spec["scenario"],
            "agents": w.agents,
            "seats": {a: s.state for a, s in w.seats.items()},
            "holders": holders,
            "observers": len(w.observers),
            "public": w.public,
            "render": w.renders,
            "tick": w.tick,
            "episode": w.episode,
        }
        entry.update(w.stats(now))
        worlds.append(entry)
    return {"op": "worlds", "worlds": worlds}


# ---- worlds -------------------------------------------------------------------------------------------------


def op_join(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    role = field(message, "role", str, AGENT)
    tokens = field(message, "tokens", dict, {})
    takeover = field(message, "takeover", bool, True)
    owner_token = field(message, "owner_token", str, None)
    observer_token = field(message, "observer_token", str, None)
    strings(tokens, "tokens")
    strings(tokens.values(), "tokens")
    if role not in ROLES:
        raise ProtocolError(BAD_REQUEST, f"'role' must be one of {list(ROLES)}, got {role!r:.40}", "see join")
    if observer_token is not None and not secrets.compare_digest(observer_token, world.observer_token):
        raise ProtocolError(
            BAD_TOKEN,
            f"that is not the observer token of world {world.world_id}",
            "ask its owner for the created reply's observer_token",
        )
    if role == OBSERVER and observer_token is None and owner_token is None and not _may_watch(world, session):
        raise ProtocolError(
            NOT_ALLOWED,
            f"world {world.world_id} admits only the observers its owner invites",
            "join with the owner's 'observer_token' (or as an operator); public worlds admit anyone",
        )
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
            if seat.state == HELD and seat.holder != session.identity and (token is None or not takeover):
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
            server.send_to(world.cancel_waiters(f"seat {agent!r} was taken over with its token", previous))
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
    server.send_to(world.cancel_waiters("you left the world", session.identity))
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
    server.send_to(world.cancel_waiters("the owner reset the world"))
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
    if _may_watch(world, session):
        return world.observation_reply(world.live_agents)
    mine = world.held_by(session.identity)
    if not mine:
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    return world.observation_reply(mine)


def op_state(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not (_member(world, session) or _may_watch(world, session)):
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    world.refresh()
    try:
        state = world.state()
    except ProtocolError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the scenario's own state() raised: its fault, not the server's
        raise ProtocolError(
            SCENARIO_ERROR, f"the state of world {world.world_id} raised {type(exc).__name__}: {exc}", "fix state()"
        ) from None
    return {"op": "state", "world": world.world_id, "tick": world.tick, "state": state}


def op_render(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not (_member(world, session) or _may_watch(world, session)):
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it (as an observer) first")
    world.refresh()
    if world.frame_tick != (world.episode, world.tick) or world.frame is None:
        try:
            world.frame = world.render()
        except ProtocolError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise ProtocolError(
                SCENARIO_ERROR, f"rendering world {world.world_id} raised {type(exc).__name__}: {exc}", "fix render()"
            ) from None
        world.frame_tick = (world.episode, world.tick)
    return {"op": "frame", "world": world.world_id, "tick": world.tick, "episode": world.episode, "frame": world.frame}


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
    "render": op_render,
    "act_batch": op_act_batch,
}
assert set(OPERATIONS) == set(REQUESTS), "every request of the protocol has exactly one handler"
