"""How sessions end: a clean ``bye``, or a silence past the keep-alive; and which connections may be replaced.

The rules (docs/protocol.md, 'Sessions'; docs/security.md):

- A session silent past its keep-alive is forgotten: its seats become ``lost`` (their tokens reclaim them), its
  worlds lose their owner, a world left with no owner and no held seat closes. ``bye`` does the same at once, with
  the seats ``free``.
- The keep-alive a client asked for (``keep_alive_s``) protects what it holds. A session that holds nothing (no
  seat, no world, no world being built) gets the heartbeat timeout whatever it asked for: a flood of long
  keep-alives pins nothing.
- A session that waits for something (an act in a world, worlds being built) is alive while the connection it last
  spoke over is open, however long the wait: a client blocked on its reply needs no heartbeat. Once that
  connection is closed, the wait keeps nothing: a dead client's pending work does not keep its session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agora_marl.envserver.connections import Connection
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer

log = logging.getLogger("agora.server")


def holds_something(server: EnvServer, session: Session) -> bool:
    """Whether forgetting the session would cost its client something: a seat, a world, or worlds being built.
    A session that holds nothing is forgotten after the heartbeat timeout, whatever keep-alive it was granted."""
    return bool(session.owned or session.pending_worlds) or server.seat_table.holds_any(session.identity)


def has_pending_work(server: EnvServer, session: Session) -> bool:
    """Whether the session waits for something: an act or act_batch in a world, or worlds being built."""
    if session.pending_worlds:
        return True
    identity = session.identity
    worlds = server.worlds
    return any(
        any(waiter.identity == identity for waiter in worlds[w].waiters)
        for w in server.seat_table.worlds_of(identity)
        if w in worlds
    )


def replaceable(server: EnvServer, conn: Connection) -> bool:
    """Whether closing a connection costs nobody anything (the connection bounds replace such ones first): no
    session spoke over it last, or its session holds nothing and waits for nothing."""
    session = server.sessions.get(conn.session)
    if session is None or session.connection is not conn:
        return True
    return not holds_something(server, session) and not has_pending_work(server, session)


def sweep_silent(server: EnvServer, now: float) -> None:
    """Forget the sessions silent past their keep-alive (see the module docstring)."""
    heartbeat = server.config.heartbeat_timeout_s
    for session in list(server.sessions.values()):
        holds = holds_something(server, session)
        silence = session.keep_alive_s if session.keep_alive_s is not None and holds else heartbeat
        if session.last_seen >= now - silence:
            continue
        connected = session.connection is not None and session.connection.alive
        if connected and has_pending_work(server, session):
            continue
        end_session(server, session, lost=True)
        log.info(
            "session %r (%s) was silent for %.0f s, its keep-alive%s: forgotten%s",
            session.name,
            session.label,
            now - session.last_seen,
            "" if connected else ", and its connection is closed",
            "; its seats are lost (their tokens reclaim them)" if holds else "",
        )


def end_session(server: EnvServer, session: Session, lost: bool) -> tuple[int, int]:
    """Forget a session: its waiting requests are dropped (nobody is left to answer), its seats released (``lost``:
    their tokens still reclaim them; else ``free``, as after ``leave``), its worlds lose their owner; a world left
    with no owner and no held seat closes, the others step if they were waiting only for it.

    Returns:
        (seats released, worlds closed).
    """
    identity = session.identity
    touched = set()
    held = server.seat_table.seats_of(identity)
    for world_id, agent in held:
        world = server.worlds.get(world_id)
        if world is not None:
            world.cancel_waiters("its session ended", identity)
            server.seat_table.release(world, agent, lost=lost)
            touched.add(world_id)
    server.seat_table.forget_session(identity)
    seats = len(held)
    for world_id in list(session.owned):
        world = server.worlds.get(world_id)
        if world is not None and world.owner == identity:  # not reclaimed with the owner token meanwhile
            world.owner = None
            touched.add(world_id)
    session.owned.clear()
    server.forget_session(session)
    closed = 0
    for world_id in touched:
        world = server.worlds.get(world_id)
        if world is not None:
            if server.close_if_abandoned(world):
                closed += 1
            else:
                server.try_step(world)
    return seats, closed
