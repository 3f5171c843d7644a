"""The stepping requests: ``act`` (one world, lockstep) and ``step_batch``/``reset_batch`` (K worlds in one message).

Like every handler (see handlers.py), each checks everything before any world moves: a batch is validated whole, its
actions included, before its first world steps. A scenario that raises in the middle of a batch closes every world
of the batch, so that the client knows the state of each (docs/protocol.md, 'step_batch').
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agora_marl.envserver.batch import BatchStepper
from agora_marl.envserver.fields import field, seed_field, strings
from agora_marl.envserver.protocol import check_value, from_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    ALREADY_ACTED,
    BAD_ACTION,
    BAD_REQUEST,
    BATCH_MISMATCH,
    EPISODE_OVER,
    LAYOUTS,
    NOT_YOUR_SEAT,
    SCENARIO_ERROR,
)

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer


def op_act(server: EnvServer, session: Session, message: dict) -> None:
    world = server.world(message.get("world"))
    if world.block is not None:
        raise world.block.refuse_single(world.world_id)
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
    if ids and set(map(type, ids)) != {int}:  # before any comparison: `True == 1` in Python
        raise ProtocolError(BAD_REQUEST, "'worlds' must list world ids (ints)", "see list")
    layout = field(message, "layout", str, "agents")
    with_state = field(message, "state", bool, False)
    if not 1 <= len(ids) <= server.config.max_batch:
        raise ProtocolError(BAD_REQUEST, f"'worlds' must list 1..{server.config.max_batch} worlds", "split the batch")
    if layout not in LAYOUTS:
        raise ProtocolError(
            BAD_REQUEST, f"'layout' must be one of {list(LAYOUTS)}, got {layout!r:.40}", "see step_batch"
        )
    block = server.world(ids[0]).block
    if block is not None:
        # A vector block is checked as a whole: one list comparison instead of K lookups.
        if not block.intact or ids != block.world_ids:
            raise ProtocolError(
                BATCH_MISMATCH,
                "vector-backed worlds step only as their whole block, in order",
                f"send worlds {block.world_ids}" if block.intact else "a world of this block was closed",
            )
        if block.sole_holder() != session.identity:
            raise ProtocolError(BATCH_MISMATCH, "you do not hold every seat of these worlds", "create with join: true")
        return block.stepper(layout, with_state)  # its worlds share spec and options by construction
    worlds = [server.world(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ProtocolError(BATCH_MISMATCH, "'worlds' lists a world twice", "list each world once")
    key = worlds[0].spec_key
    for world in worlds:
        if world.sole_holder() != session.identity:
            raise ProtocolError(
                BATCH_MISMATCH, f"you do not hold every seat of world {world.world_id}", "create with join: true"
            )
        if world.block is not None:
            raise ProtocolError(
                BATCH_MISMATCH,
                "vector-backed worlds step only as their whole block",
                f"send worlds {world.block.world_ids}",
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
