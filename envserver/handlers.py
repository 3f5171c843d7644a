"""One function per protocol operation, ``handler(server, session, message) -> reply | None``, and the table of them.
``hello`` is also given the request's :class:`~agora_marl.envserver.sessions.Origin` (it opens its session there).

:data:`OPERATIONS` maps every request of the protocol (``vocabulary.REQUESTS``) to its handler; the server loop looks
the ``op`` up there. Each handler checks everything before it changes anything, so a refused request (a raised
ProtocolError) leaves the server as it was. ``None`` means the reply comes later (``act`` waits for its world to step).
The handlers reach the server through its public methods only; the server imports this module, never the reverse.

The stepping requests (``act``, ``step_batch``, ``reset_batch``) live in stepping.py, ``act_batch`` in partial.py,
``create`` in creation.py; reading fields in fields.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agora_marl import __version__, scenarios
from agora_marl.envserver.creation import op_create
from agora_marl.envserver.fields import field, plain_field, seed_field
from agora_marl.envserver.identity import same_secret
from agora_marl.envserver.joining import is_member, may_read_state, may_watch, op_join, op_join_group, op_leave
from agora_marl.envserver.liveness import end_session
from agora_marl.envserver.partial import op_act_batch
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    BAD_REQUEST,
    FRAME_LAYOUTS,
    FRAMES_JOINED,
    NOT_ALLOWED,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    PROTOCOL_VERSION,
    REQUESTS,
    SCENARIO_ERROR,
)
from agora_marl.envserver.stepping import op_act, op_reset_batch, op_step_batch
from agora_marl.envserver.world import World

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer
    from agora_marl.envserver.sessions import Origin

log = logging.getLogger("agora.server")


def _owned(server: EnvServer, session: Session, message: dict) -> World:
    world = server.world(message.get("world"))
    if world.owner != session.identity:
        raise ProtocolError(NOT_OWNER, f"only the owner of world {world.world_id} may do that", "create your own world")
    return world


def _visible(server: EnvServer, world: World, session: Session) -> bool:
    """Whether ``list`` shows the world to the session."""
    return may_watch(world, session) or is_member(server, world, session)


# ---- connection ---------------------------------------------------------------------------------------------


def op_hello(server: EnvServer, session: Session | None, message: dict, origin: Origin) -> dict:
    """Open a session (or, with its ``secret``, renew one): the secret it returns authorises every later request."""
    name = str(field(message, "name", str, ""))[:200]
    config = server.config
    keep_alive = field(message, "keep_alive_s", (int, float), None)
    operator = field(message, "operator", str, None)
    frames = field(message, "frames", str, None)
    if frames is not None and frames not in FRAME_LAYOUTS:
        raise ProtocolError(
            BAD_REQUEST, f"'frames' must be one of {list(FRAME_LAYOUTS)}, got {frames!r:.40}", "see Frames"
        )
    if keep_alive is not None and not keep_alive >= 0:  # NaN too
        raise ProtocolError(BAD_REQUEST, f"'keep_alive_s' must be >= 0, got {keep_alive}", "send seconds, or omit it")
    if operator is not None and not same_secret(operator, server.operator_secret):
        raise ProtocolError(
            NOT_ALLOWED, "that is not this server's operator secret", "read it from the server's operator file"
        )
    if session is None:
        session = server.open_session(origin, operator=operator is not None)
    session.name = name
    session.operator = session.operator or operator is not None
    if frames is not None:
        session.joined_frames = frames == FRAMES_JOINED
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
            "max_unread_bytes": config.max_unread_bytes,
        },
        "scenarios": sorted(scenarios.registered()),
        "allowed_packages": list(config.allowed_packages),
    }


def op_ping(server: EnvServer, session: Session | None, message: dict) -> dict:
    return {"op": "pong", "time": time.time()}


def op_bye(server: EnvServer, session: Session, message: dict) -> dict:
    """End the session now: its seats become free, its worlds lose their owner (and close when nobody holds a seat
    in them), its secret is forgotten. What a client says when it closes cleanly."""
    seats, closed = end_session(server, session, lost=False)
    log.info("session %r (%s) said bye: %d seats left, %d worlds closed", session.name, session.label, seats, closed)
    return {"op": "bye", "seats": seats, "closed": closed}


def op_list(server: EnvServer, session: Session, message: dict) -> dict:
    now = time.monotonic()
    worlds = []
    for w in server.worlds.values():
        if not _visible(server, w, session):
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
            "group": w.named_group,
            "render": w.renders,
            "tick": w.tick,
            "episode": w.episode,
        }
        entry.update(w.stats(now))
        worlds.append(entry)
    return {"op": "worlds", "worlds": worlds}


# ---- worlds -------------------------------------------------------------------------------------------------


def op_close(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    server.close_world(world, "its owner closed it")
    return {"op": "closed", "world": world.world_id}


def op_reset(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    if world.block is not None:
        raise world.block.refuse_single(world.world_id)
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
    return world.observation_reply(world.live_agents)


def op_observe(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if may_watch(world, session):
        return world.observation_reply(world.live_agents)
    mine = world.held_by(session.identity)
    if not mine:
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    return world.observation_reply(mine)


def op_state(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not may_read_state(world, session):
        if is_member(server, world, session):
            raise ProtocolError(
                NOT_ALLOWED,
                f"world {world.world_id} keeps its global state from seat holders",
                "its owner may create it with 'share_state': true; use your seats' observations",
            )
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
    if not (is_member(server, world, session) or may_watch(world, session)):
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
OPERATIONS: dict[str, Callable[..., dict | None]] = {
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
    "join_group": op_join_group,
    "bye": op_bye,
}
assert set(OPERATIONS) == set(REQUESTS), "every request of the protocol has exactly one handler"
