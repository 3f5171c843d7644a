"""Taking and giving back seats: ``join`` (one world), ``join_group`` (the same seats of every world of a named
group, in one request) and ``leave``, and the one set of rules they share for who may take which seat.

A seat may be taken when it is free (or the session already holds it), when its token is brought (a lost seat, or a
takeover of a held one unless ``takeover`` is false), and, for a seat the owner made invitation-only, only by the
owner or a session that brings the world's ``invite_token``. Every seat of a request is checked, in every world of
a group, before any is taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agora_marl.envserver.fields import field, strings
from agora_marl.envserver.groups import check_patterns, match_seats
from agora_marl.envserver.identity import same_secret
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
    NOT_YOUR_SEAT,
    OBSERVER,
    ROLES,
    SEAT_TAKEN,
)

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer
    from agora_marl.envserver.world import World


def may_watch(world: World, session: Session) -> bool:
    """Whether the session may read the whole world (every agent's observations, its frames): its owner, an
    observer the owner admitted, an operator, anyone for a public world."""
    return world.public or session.operator or world.owner == session.identity or session.identity in world.observers


def is_member(server: EnvServer, world: World, session: Session) -> bool:
    """Whether the session owns the world or holds one of its seats."""
    return world.owner == session.identity or server.seat_table.holds_in(session.identity, world.world_id)


def may_read_state(world: World, session: Session) -> bool:
    """The global state holds every agent's private information: the owner, those who may watch, a session holding
    every seat, and (where the owner shares it, ``share_state``) any seat holder may read it."""
    if may_watch(world, session):
        return True
    held = world.held_by(session.identity)
    return bool(held) and (world.share_state or len(held) == len(world.agents))


def _invited(world: World, session: Session, invite_token: str | None) -> bool:
    if world.owner == session.identity:
        return True
    if invite_token is None:
        return False
    if not same_secret(invite_token, world.invite_token):
        raise ProtocolError(
            BAD_TOKEN,
            f"that is not the invite token of world {world.world_id}",
            "ask its owner for the created reply's invite_token",
        )
    return True


def _check_seats(
    world: World,
    session: Session,
    seats: list[str],
    tokens: dict[str, str],
    takeover: bool,
    invite_token: str | None,
) -> None:
    """Raise unless the session may take every one of ``seats`` of ``world``; changes nothing."""
    invited = _invited(world, session, invite_token)
    for agent in seats:
        seat = world.seat(agent)
        token = tokens.get(agent)
        if token is not None and not (seat.token and same_secret(token, seat.token)):
            raise ProtocolError(BAD_TOKEN, f"that is not the token of seat {agent!r}", "join without a token")
        if seat.state == HELD and seat.holder != session.identity and (token is None or not takeover):
            raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} is held by another client", "pick a free seat")
        if seat.state == LOST and token is None:
            raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} was lost by its holder", "reclaim it with its token")
        if token is None and not invited and world.by_invitation(agent):
            raise ProtocolError(
                NOT_ALLOWED,
                f"seat {agent!r} of world {world.world_id} is by invitation",
                "ask its owner for the created reply's invite_token and send it as 'invite_token'",
            )
    if len(set(seats)) != len(seats):
        raise ProtocolError(BAD_REQUEST, "'seats' names a seat twice", "name each seat once")


def _take_seats(server: EnvServer, world: World, session: Session, seats: list[str]) -> dict[str, str]:
    """Give the session ``seats`` (checked); a takeover interrupts the previous holder's waiting request."""
    world.refresh()
    granted = {}
    for agent in seats:
        previous = server.seat_table.holder(world, agent)
        if previous is not None and previous != session.identity:  # its requests for its other seats wait on
            server.send_to(world.cancel_waiters(f"seat {agent!r} was taken over with its token", previous, agent))
        granted[agent] = server.seat_table.take(world, agent, session.identity)
    return granted


def _seat_obs(world: World, agents: list[str]) -> dict:
    return {a: to_wire(world.obs_spaces[a], world.obs[a]) for a in agents if a in world.obs}


def op_join(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    role = field(message, "role", str, AGENT)
    tokens = field(message, "tokens", dict, {})
    takeover = field(message, "takeover", bool, True)
    owner_token = field(message, "owner_token", str, None)
    observer_token = field(message, "observer_token", str, None)
    invite_token = field(message, "invite_token", str, None)
    strings(tokens, "tokens")
    strings(tokens.values(), "tokens")
    if role not in ROLES:
        raise ProtocolError(BAD_REQUEST, f"'role' must be one of {list(ROLES)}, got {role!r:.40}", "see join")
    if observer_token is not None and not same_secret(observer_token, world.observer_token):
        raise ProtocolError(
            BAD_TOKEN,
            f"that is not the observer token of world {world.world_id}",
            "ask its owner for the created reply's observer_token",
        )
    if role == OBSERVER and observer_token is None and owner_token is None and not may_watch(world, session):
        raise ProtocolError(
            NOT_ALLOWED,
            f"world {world.world_id} admits only the observers its owner invites",
            "join with the owner's 'observer_token' (or as an operator); public worlds admit anyone",
        )
    if owner_token is not None and not same_secret(owner_token, world.owner_token):
        raise ProtocolError(
            BAD_TOKEN, f"that is not the owner token of world {world.world_id}", "send the created reply's owner_token"
        )
    seats: list[str] = []
    if role == AGENT:
        requested = field(message, "seats", (list, str), list(tokens) if tokens else "all")
        if requested == "all":
            invited = _invited(world, session, invite_token)
            seats = [
                a
                for a, s in world.seats.items()
                if s.holder == session.identity or (s.state == FREE and (invited or not world.by_invitation(a)))
            ]
        elif isinstance(requested, list):
            strings(requested, "seats")
            seats = requested
        else:
            raise ProtocolError(BAD_REQUEST, "'seats' must be a list of agents or \"all\"", "see join")
        _check_seats(world, session, seats, tokens, takeover, invite_token)
    # Checked: now change state.
    granted = _take_seats(server, world, session, seats)
    if owner_token is not None:
        previous_owner = server.sessions.get(world.owner)
        if previous_owner is not None:
            previous_owner.owned.discard(world.world_id)
        world.owner = session.identity
        session.owned.add(world.world_id)
    if role == OBSERVER:
        world.observers.add(session.identity)
        session.observer = True
    server.try_step(world)
    return {
        "op": "joined",
        "world": world.world_id,
        "seats": granted,
        "spec": world.spec,
        "tick": world.tick,
        "episode": world.episode,
        "agents": world.live_agents,
        "obs": _seat_obs(world, seats if role == AGENT else world.agents),
    }


def op_join_group(server: EnvServer, session: Session, message: dict) -> dict:
    """Take the same seats of every world of a named group, all or none."""
    group = server.groups.get(field(message, "group", str))
    requested = field(message, "seats", (list, str))
    patterns = check_patterns([requested] if isinstance(requested, str) else requested, "seats")
    takeover = field(message, "takeover", bool, True)
    invite_token = field(message, "invite_token", str, None)
    worlds = [server.world(w) for w in group.worlds]
    seats = match_seats(worlds[0].agents, patterns)
    for world in worlds:
        _check_seats(world, session, seats, {}, takeover, invite_token)
    tokens = [_take_seats(server, world, session, seats) for world in worlds]
    for world in worlds:
        server.try_step(world)
    return {
        "op": "joined_group",
        "group": group.name,
        "worlds": [w.world_id for w in worlds],
        "seats": seats,
        "tokens": tokens,
        "spec": worlds[0].spec,
        "tick": [w.tick for w in worlds],
        "episode": [w.episode for w in worlds],
        "share_state": worlds[0].share_state,
        "obs": {str(w.world_id): _seat_obs(w, seats) for w in worlds},
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
        server.seat_table.release(world, agent, lost=False)
    world.observers.discard(session.identity)
    if not server.close_if_abandoned(world):
        server.try_step(world)
    return {"op": "left", "world": world.world_id, "seats": seats}
