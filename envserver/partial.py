"""``act_batch``: one client's actions for its seats of K shared worlds in one message, and one reply of arrays.

This is the mixed-control path: a learner (or a scripted opponent at learner scale) holds some seats of K worlds
whose other seats other clients hold. Each world keeps its own step rule (it steps when all its held seats acted,
or at its deadline), so the request becomes one waiting ``act`` per world, all tied to one :class:`BatchWaiter`.
As each world steps, the waiter writes that world's row of the sender's seats into preallocated ``(K, ...)``
arrays; the reply goes when the last of the K worlds has stepped. Waiting for all K (rather than streaming worlds
as they step) keeps the client's loop a plain ``step`` of K rows, like ``step_batch``; a slow world costs the batch
its deadline, never more.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from agora_marl.envserver.batch import batch_reply
from agora_marl.envserver.fields import field, strings
from agora_marl.envserver.joining import may_read_state
from agora_marl.envserver.protocol import check_value, from_wire, rows_of, write_row, zeros_like_space
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    ALREADY_ACTED,
    BAD_ACTION,
    BAD_REQUEST,
    BATCH_MISMATCH,
    EPISODE_OVER,
    LATE,
    NOT_ALLOWED,
    NOT_YOUR_SEAT,
)

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer
    from agora_marl.envserver.world import StepOutcome, World


class BatchWaiter:
    """The reply of one ``act_batch`` being filled in, a world's row at a time, as the K worlds step."""

    def __init__(self, request_id: int, worlds: list[World], seats: list[str], with_state: bool = False):
        self.request_id = request_id
        self.world_ids = [w.world_id for w in worlds]
        self.seats = seats
        self.agents = worlds[0].agents
        k, n = len(worlds), len(seats)
        self.obs_spaces = worlds[0].obs_spaces
        self.obs = {a: zeros_like_space(self.obs_spaces[a], (k,)) for a in seats}
        self.final_obs: dict | None = None
        self.rewards = np.zeros((k, n), np.float32)
        self.terminated = np.zeros((k, n), bool)
        self.truncated = np.zeros((k, n), bool)
        self.active = np.zeros((k, n), bool)
        self.alive = np.zeros((k, n), bool)
        self.episode_over = np.zeros(k, bool)
        self.filled = np.zeros((k, len(self.agents)), bool)
        self.late = np.zeros((k, len(self.agents)), bool)
        space = worlds[0].state_space
        self.state = np.zeros((k, *space.shape), space.dtype) if with_state else None
        """(K, ...) global states after the step, when asked (and the worlds share them)."""
        self.final_state: np.ndarray | None = None
        self.ticks = np.zeros(k, np.int64)
        self.episodes = np.zeros(k, np.int64)
        self.left = k
        self.failed = False
        """An error reply was sent (a world was interrupted): rows that still come in are dropped."""

    def record(self, k: int, world: World, outcome: StepOutcome) -> bool:
        """Write world ``k``'s row; True when it was the last one."""
        live = world.env.agents
        for i, agent in enumerate(self.seats):
            self.rewards[k, i] = outcome.rewards.get(agent, 0.0)
            self.terminated[k, i] = outcome.terminated.get(agent, False)
            self.truncated[k, i] = outcome.truncated.get(agent, False)
            self.active[k, i] = agent in outcome.active_before
            self.alive[k, i] = agent in live
            if agent in world.obs:  # an agent that left at this step: its last observation (later: zeros)
                write_row(self.obs[agent], k, world.obs[agent])
        if outcome.final_obs is not None:
            self.episode_over[k] = True
            if self.final_obs is None:
                self.final_obs = {a: zeros_like_space(self.obs_spaces[a], (len(self.ticks),)) for a in self.seats}
            for agent in self.seats:
                if agent in outcome.final_obs:
                    write_row(self.final_obs[agent], k, outcome.final_obs[agent])
        elif world.episode_over:
            self.episode_over[k] = True
        if self.state is not None:
            self.state[k] = world.state()
            if outcome.final_state is not None:
                if self.final_state is None:
                    self.final_state = np.zeros_like(self.state)
                self.final_state[k] = outcome.final_state
        for j, agent in enumerate(self.agents):
            why = outcome.filled.get(agent)
            if why is not None:
                self.filled[k, j] = True
                self.late[k, j] = why == LATE
        self.ticks[k], self.episodes[k] = world.tick, world.episode
        self.left -= 1
        return self.left == 0 and not self.failed

    def reply(self) -> dict:
        reply = batch_reply(
            self.world_ids,
            self.obs,
            self.alive,
            rewards=self.rewards,
            terminated=self.terminated,
            truncated=self.truncated,
            episode_over=self.episode_over,
            final_obs=self.final_obs,
            state=self.state,
            final_state=self.final_state,
            seats=self.seats,
            agents=self.agents,
            active=self.active,
            filled=self.filled,
            late=self.late,
            tick=self.ticks,
            episode=self.episodes,
        )
        reply["id"] = self.request_id
        return reply


def op_act_batch(server: EnvServer, session: Session, message: dict) -> None:
    """Validate the whole batch (worlds, seats, every action) before any world gets an action; then act in each."""
    ids = field(message, "worlds", list)
    if not 1 <= len(ids) <= server.config.max_batch:
        raise ProtocolError(BAD_REQUEST, f"'worlds' must list 1..{server.config.max_batch} worlds", "split the batch")
    worlds = [server.world(w) for w in ids]
    if len({w.world_id for w in worlds}) != len(worlds):
        raise ProtocolError(BATCH_MISMATCH, "'worlds' names a world twice", "name each world once")
    first = worlds[0]
    seats = first.held_by(session.identity)
    if not seats:
        raise ProtocolError(NOT_YOUR_SEAT, f"you hold no seat of world {first.world_id}", "join the worlds first")
    for world in worlds:
        if world.block is not None:
            raise world.block.refuse_single(world.world_id)
        if world.spec_key != first.spec_key:
            raise ProtocolError(BATCH_MISMATCH, f"world {world.world_id} is of another spec", "batch equal worlds")
        if world.held_by(session.identity) != seats:
            raise ProtocolError(
                BATCH_MISMATCH,
                f"you hold {world.held_by(session.identity)} of world {world.world_id} but {seats} of world "
                f"{first.world_id}",
                "hold the same seats in every world of the batch",
            )
        if world.episode_over:
            raise ProtocolError(EPISODE_OVER, f"the episode of world {world.world_id} is over", "its owner resets it")
        if any(a in world.pending for a in seats) or any(w.identity == session.identity for w in world.waiters):
            raise ProtocolError(
                ALREADY_ACTED, f"you already acted in world {world.world_id} this tick", "wait for its reply"
            )
    with_state = field(message, "state", bool, False)
    if with_state:
        if first.state_space is None:
            raise ProtocolError(BAD_REQUEST, "these worlds have no global state", "send 'state': false")
        for world in worlds:
            if not may_read_state(world, session):
                raise ProtocolError(
                    NOT_ALLOWED,
                    f"world {world.world_id} keeps its global state from seat holders",
                    "its owner may create it with 'share_state': true; send 'state': false",
                )
    actions = field(message, "actions", dict)
    strings(actions, "actions")
    if set(actions) != set(seats):
        raise ProtocolError(BAD_ACTION, f"'actions' needs exactly your seats {seats}", "one (K, ...) stack per seat")
    k = len(worlds)
    rows: dict[str, list] = {}
    for agent in seats:
        space = first.act_spaces[agent]
        try:
            stack = check_value(space, actions[agent], (k,), f"actions/{agent}")
        except ValueError as exc:
            raise ProtocolError(BAD_ACTION, str(exc), f"a (K, ...) stack of actions of {space}") from None
        rows[agent] = [from_wire(space, rows_of(stack, i)) for i in range(k)]
    waiter = BatchWaiter(message["id"], worlds, seats, with_state)
    now = time.monotonic()
    for i, world in enumerate(worlds):
        world.submit(session.identity, message["id"], {a: rows[a][i] for a in seats}, now, batch=(waiter, i))
    for world in worlds:
        server.try_step(world)
    return None
