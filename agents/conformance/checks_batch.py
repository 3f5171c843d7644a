"""Checks of the learners' path: step_batch and reset_batch over K worlds in both layouts, and batch_mismatch for
worlds a batch may not hold (docs/protocol.md, 'step_batch', 'reset_batch')."""

from __future__ import annotations

import numpy as np

from agora_marl.agents.conformance.base import MAX_EPISODE_STEPS, SHORT_DEADLINE_MS, Context, check
from agora_marl.agents.conformance.checks_worlds import agents_of, world_entry
from agora_marl.agents.conformance.peer import Peer, Skip, expect, short
from agora_marl.agents.conformance.values import expect_value, legal_rows
from agora_marl.envserver.protocol import pack
from agora_marl.envserver.protocol.vocabulary import BAD_REQUEST, BATCH_MISMATCH, LAYOUT_AGENTS, LAYOUT_STACKED

#: Worlds per batch in these checks.
K = 2


def _actions(spec: dict, agents: list[str], layout: str, k: int) -> dict | np.ndarray:
    spaces = spec["action_spaces"]
    if layout == LAYOUT_STACKED:
        return legal_rows(spaces[agents[0]], (k, len(agents)))
    return {agent: legal_rows(spaces[agent], (k,)) for agent in agents}


def _expect_obs(spec: dict, agents: list[str], layout: str, obs, where: str, k: int) -> None:
    spaces = spec["observation_spaces"]
    if layout == LAYOUT_STACKED:
        expect_value(spaces[agents[0]], obs, where, (k, len(agents)))
        return
    expect(isinstance(obs, dict) and sorted(obs) == sorted(agents), f"{where} should map every agent: {short(obs)}")
    for agent in agents:
        expect_value(spaces[agent], obs[agent], f"{where}/{agent}", (k,))


def _expect_array(batch: dict, key: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    value = batch.get(key)
    expect(isinstance(value, np.ndarray), f"batch.{key} should be an array: {short(batch)}")
    expect(
        value.dtype == np.dtype(dtype) and value.shape == shape,
        f"batch.{key} is {value.dtype} {value.shape}, should be {dtype} {shape}",
    )
    return value


def _shared_spaces(spec: dict, agents: list[str]) -> bool:
    first = agents[0]
    return all(
        spec["observation_spaces"][a] == spec["observation_spaces"][first]
        and spec["action_spaces"][a] == spec["action_spaces"][first]
        for a in agents
    )


def _batch_round(ctx: Context, layout: str) -> None:
    a: Peer = ctx.peer("a")
    created = a.create(join=True, copies=K, seed=3)
    worlds, spec = created["worlds"], created["spec"]
    agents = agents_of(spec)
    n = len(agents)
    if layout == LAYOUT_STACKED and not _shared_spaces(spec, agents):
        a.refused("reset_batch", BAD_REQUEST, "stacked needs shared spaces", worlds=worlds, layout=layout)
        raise Skip("the scenario's agents do not share their spaces; stacked was refused as it should be")
    reset = a.ok("reset_batch", worlds=worlds, layout=layout, seed=5)
    expect(reset.get("worlds") == worlds, f"batch.worlds should be {worlds}: {short(reset)}")
    _expect_obs(spec, agents, layout, reset.get("obs"), "reset_batch obs", K)
    _expect_array(reset, "alive", "bool", (K, n))
    expect("rewards" not in reset, "a reset_batch reply carries no rewards")
    again = a.ok("reset_batch", worlds=worlds, layout=layout, seed=5)
    first_obs = reset["obs"] if layout == LAYOUT_STACKED else reset["obs"][agents[0]]
    again_obs = again["obs"] if layout == LAYOUT_STACKED else again["obs"][agents[0]]
    expect(np.array_equal(first_obs, again_obs), "two reset_batch with seed 5 gave different observations")
    with_state = spec.get("state_space") is not None
    actions = _actions(spec, agents, layout, K)
    for step in range(1, MAX_EPISODE_STEPS + 1):
        batch = a.ok("step_batch", worlds=worlds, layout=layout, actions=actions, state=with_state)
        if step == 1:
            expect(batch.get("worlds") == worlds, f"batch.worlds should be {worlds}: {short(batch)}")
            _expect_obs(spec, agents, layout, batch.get("obs"), "step_batch obs", K)
            _expect_array(batch, "rewards", "float32", (K, n))
            for key in ("terminated", "truncated", "alive"):
                _expect_array(batch, key, "bool", (K, n))
            if with_state:
                expect_value(spec["state_space"], batch.get("state"), "step_batch state", (K,))
        over = _expect_array(batch, "episode_over", "bool", (K,))
        if over.any():
            _expect_obs(spec, agents, layout, batch.get("final_obs"), "step_batch final_obs", K)
            if with_state:
                expect_value(spec["state_space"], batch.get("final_state"), "step_batch final_state", (K,))
            return
        expect("final_obs" not in batch, f"step {step}: final_obs comes only when some episode is over")
    raise Skip(f"no episode ended in {MAX_EPISODE_STEPS} batch steps of the fixed action")


@check
def check_step_batch_agents(ctx: Context) -> None:
    """step_batch and reset_batch of K worlds in the agents layout: shapes, dtypes, seeds, final_obs"""
    _batch_round(ctx, LAYOUT_AGENTS)


@check
def check_step_batch_stacked(ctx: Context) -> None:
    """step_batch and reset_batch of K worlds in the stacked layout: shapes, dtypes, seeds, final_obs"""
    _batch_round(ctx, LAYOUT_STACKED)


@check
def check_batch_mismatch(ctx: Context) -> None:
    """a batch with another session's world, a world not fully held, or a world twice gets batch_mismatch"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=True, copies=K, seed=0)
    mine, spec = created["worlds"], created["spec"]
    agents = agents_of(spec)
    foreign = b.create(join=True, seed=0)["worlds"][0]
    unheld = a.create(join=False)["worlds"][0]
    for what, worlds in {
        "another session's world": [*mine, foreign],
        "a world whose seats the sender does not hold": [mine[0], unheld],
        "a world listed twice": [mine[0], mine[0]],
    }.items():
        actions = _actions(spec, agents, LAYOUT_AGENTS, len(worlds))
        a.refused("step_batch", BATCH_MISMATCH, what, worlds=worlds, actions=actions)
        a.refused("reset_batch", BATCH_MISMATCH, what, worlds=worlds)
    for world in [*mine, foreign]:
        owner = b if world == foreign else a
        entry = world_entry(owner, world)
        expect(entry is not None and entry.get("tick") == 0, f"a refused batch stepped world {world}: {short(entry)}")


@check
def check_act_batch(ctx: Context) -> None:
    """act_batch by two sessions holding different seats of K shared worlds: each world steps once both acted, each
    reply covers only its sender's seats as (K, ...) arrays, nothing filled"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(copies=K, seed=0, wait_for_seats=False, deadline_ms=10_000)
    worlds, spec = created["worlds"], created["spec"]
    agents = agents_of(spec, at_least=2)
    mine, theirs = agents[:1], agents[1:]
    for world in worlds:
        a.ok("join", world=world, seats=mine)
        b.ok("join", world=world, seats=theirs)
    b_request = b.send("act_batch", worlds=worlds, actions=_actions(spec, theirs, LAYOUT_AGENTS, K))
    a_request = a.send("act_batch", worlds=worlds, actions=_actions(spec, mine, LAYOUT_AGENTS, K))
    for peer, request, seats in ((a, a_request, mine), (b, b_request, theirs)):
        batch = peer.answer("act_batch", request)
        expect(batch.get("worlds") == worlds and batch.get("seats") == seats, f"act_batch names: {short(batch)}")
        expect(batch.get("agents") == agents, f"act_batch.agents should be {agents}: {short(batch)}")
        _expect_obs(spec, seats, LAYOUT_AGENTS, batch.get("obs"), f"{peer.name}'s act_batch obs", K)
        _expect_array(batch, "rewards", "float32", (K, len(seats)))
        for key in ("terminated", "truncated", "active", "alive"):
            _expect_array(batch, key, "bool", (K, len(seats)))
        _expect_array(batch, "episode_over", "bool", (K,))
        filled = _expect_array(batch, "filled", "bool", (K, len(agents)))
        _expect_array(batch, "late", "bool", (K, len(agents)))
        expect(not filled.any(), f"every seat acted, yet act_batch says some were filled: {short(batch)}")
        ticks = _expect_array(batch, "tick", "int64", (K,))
        _expect_array(batch, "episode", "int64", (K,))
        expect(list(ticks) == [1] * K, f"each world steps once: {short(batch)}")
    a.refused(
        "act_batch",
        BATCH_MISMATCH,
        "a world listed twice",
        worlds=[worlds[0], worlds[0]],
        actions=_actions(spec, mine, LAYOUT_AGENTS, 2),
    )
    # b does not act: at the deadline its seats are filled and late; a's own, which acted, never are.
    late_worlds = a.create(copies=K, seed=1, wait_for_seats=False, deadline_ms=SHORT_DEADLINE_MS)["worlds"]
    for world in late_worlds:
        a.ok("join", world=world, seats=mine)
        b.ok("join", world=world, seats=theirs)
    batch = a.answer(
        "act_batch", a.send("act_batch", worlds=late_worlds, actions=_actions(spec, mine, LAYOUT_AGENTS, K))
    )
    filled, late = _expect_array(batch, "filled", "bool", (K, len(agents))), batch.get("late")
    others = [agents.index(x) for x in theirs]
    own = [agents.index(x) for x in mine]
    expect(filled[:, others].all() and late[:, others].all(), f"b's late seats should be filled, late: {short(batch)}")
    expect(not filled[:, own].any() and not late[:, own].any(), f"a's own seats acted: never filled: {short(batch)}")


@check
def check_joined_frames(ctx: Context) -> None:
    """a session that asks for frames "joined" at hello gets each batch reply's arrays in one frame, with the same
    numbers as a session reading them a frame each; a joined request is read like a separate one"""
    joined, separate = ctx.peer("joined", frames="joined"), ctx.peer("separate")
    replies, held = {}, {}
    for role, peer in (("joined", joined), ("separate", separate)):
        created = peer.create(join=True, copies=K, seed=3)
        worlds, spec = created["worlds"], created["spec"]
        agents = agents_of(spec)
        request = peer.send("reset_batch", worlds=worlds, layout=LAYOUT_AGENTS, seed=5)
        reset = peer.answer("reset_batch", request)
        frames = peer.frame_counts[request]
        replies[role], held[role] = reset, worlds
        if peer is joined:
            expect(frames == 2, f"a reset_batch reply to a joined session came in {frames} frames, not 2")
        else:
            expect(frames > 2, f"a reset_batch reply to a separate session came in {frames} frames: one per array")
    for key in ("obs", "alive"):
        a, b = replies["joined"].get(key), replies["separate"].get(key)
        a, b = (a, b) if key == "alive" else (a.get(agents[0]), b.get(agents[0]))
        expect(
            isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b) and a.dtype == b.dtype,
            f"joined and separate reset_batch {key} differ for seed 5: {short(a)} vs {short(b)}",
        )
    worlds = held["joined"]
    actions = _actions(spec, agents, LAYOUT_AGENTS, K)
    request = next(ctx.ids)
    joined.send_frames(
        pack({"op": "step_batch", "id": request, "secret": joined.secret, "worlds": worlds, "actions": actions}, True),
        request,
        "a joined step_batch request",
    )
    batch = joined.answer("step_batch", request)
    _expect_array(batch, "rewards", "float32", (K, len(agents)))
    joined.refused("hello", BAD_REQUEST, "frames must be separate or joined", session=False, frames="all-in-one")
