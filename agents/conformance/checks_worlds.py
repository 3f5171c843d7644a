"""Checks of worlds and the step rule: create, lockstep between clients, deadlines, wait_for_seats, episodes and
auto-reset, reset, state, render (docs/protocol.md, 'Worlds, seats, roles', 'The step rule', 'Requests')."""

from __future__ import annotations

import math

import numpy as np

from agora_marl.agents.conformance.base import (
    LONG_DEADLINE_MS,
    MAX_EPISODE_STEPS,
    QUIET_S,
    SHORT_DEADLINE_MS,
    Context,
    check,
)
from agora_marl.agents.conformance.peer import Peer, Skip, expect, short
from agora_marl.agents.conformance.values import expect_value, legal
from agora_marl.envserver.protocol.vocabulary import (
    ALREADY_ACTED,
    BAD_REQUEST,
    EPISODE_OVER,
    ERROR_OP,
    FREE,
    HELD,
    INTERRUPTED,
    LATE,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    SCENARIO_ERROR,
    SCENARIO_NOT_ALLOWED,
)

_STEP_FIELDS = ("obs", "rewards", "terminated", "truncated", "active", "infos")


def agents_of(spec: dict, at_least: int = 1) -> list[str]:
    """The spec's agents; skips the check when the scenario has fewer than ``at_least``."""
    agents = spec.get("possible_agents")
    expect(isinstance(agents, list) and agents, f"spec.possible_agents should list the agents: {short(spec)}")
    if len(agents) < at_least:
        raise Skip(f"the check needs a scenario of at least {at_least} agents; this one has {agents}")
    return agents


def actions_for(spec: dict, seats: list[str]) -> dict:
    """A legal action for each of ``seats``."""
    return {agent: legal(spec["action_spaces"][agent]) for agent in seats}


def act(peer: Peer, world: int, spec: dict, seats: list[str]) -> int:
    """Send an act with a legal action for each of ``seats``; returns its id."""
    return peer.send("act", world=world, actions=actions_for(spec, seats))


def expect_step(step: dict, spec: dict, seats: list[str], where: str) -> None:
    """Fail unless a step reply carries exactly ``seats`` in its per-seat fields, each well formed."""
    for key in _STEP_FIELDS:
        expect(isinstance(step.get(key), dict), f"{where}: step.{key} should be a map: {short(step)}")
    for key in _STEP_FIELDS[1:]:
        expect(
            sorted(step[key]) == sorted(seats), f"{where}: step.{key} should cover exactly {seats}: {short(step[key])}"
        )
    for agent, value in step["obs"].items():
        expect(agent in seats, f"{where}: step.obs holds {agent!r}, which the request did not act for")
        expect_value(spec["observation_spaces"][agent], value, f"{where}: step.obs/{agent}")
    for agent in seats:
        expect(_number(step["rewards"][agent]), f"{where}: rewards[{agent!r}] should be a number")
        for key in ("terminated", "truncated", "active"):
            expect(isinstance(step[key][agent], bool), f"{where}: {key}[{agent!r}] should be a bool")
    for key, kind in (("tick", int), ("episode", int), ("episode_over", bool), ("filled", dict), ("agents", list)):
        expect(isinstance(step.get(key), kind), f"{where}: step.{key} should be a {kind.__name__}: {short(step)}")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def world_entry(peer: Peer, world: int) -> dict | None:
    """The ``list`` entry of a world as ``peer`` sees it (None: not listed)."""
    for entry in peer.ok("list").get("worlds", []):
        if entry.get("world") == world:
            return entry
    return None


@check
def check_create_join(ctx: Context) -> None:
    """create with join returns worlds, spec, tokens and first observations; without join, no tokens"""
    a = ctx.peer("a")
    created = a.create(join=True, seed=0)
    worlds, spec = created["worlds"], created.get("spec")
    expect(len(worlds) == 1, f"create of one copy should make one world: {worlds}")
    expect(isinstance(spec, dict), f"created.spec should be a map: {short(created)}")
    agents = agents_of(spec)
    for key in ("observation_spaces", "action_spaces"):
        expect(
            isinstance(spec.get(key), dict) and sorted(spec[key]) == sorted(agents),
            f"spec.{key} should give each agent's space: {short(spec)}",
        )
    expect(spec.get("scenario") == ctx.scenario, f"spec.scenario should be {ctx.scenario!r}: {spec.get('scenario')!r}")
    expect("state_space" in spec, "spec should hold state_space (nil where there is none)")
    for key in ("owner_token", "observer_token"):
        expect(isinstance(created.get(key), str) and created[key], f"created.{key} should be a string")
    expect(isinstance(created.get("render"), bool), f"created.render should be a bool: {short(created)}")
    tokens = created.get("tokens")
    expect(
        isinstance(tokens, list) and len(tokens) == 1 and sorted(tokens[0]) == sorted(agents),
        f"created.tokens should be one map of every agent's token: {short(tokens)}",
    )
    expect(all(isinstance(t, str) and t for t in tokens[0].values()), "seat tokens should be strings")
    obs = created.get("obs", {}).get(str(worlds[0]))
    expect(isinstance(obs, dict) and obs, f"created.obs[{str(worlds[0])!r}] should hold the first observations")
    for agent, value in obs.items():
        expect(agent in agents, f"created.obs holds an unknown agent {agent!r}")
        expect_value(spec["observation_spaces"][agent], value, f"created.obs/{worlds[0]}/{agent}")
    entry = world_entry(a, worlds[0])
    expect(entry is not None, f"the new world {worlds[0]} is not in its owner's list")
    expect(entry.get("tick") == 0 and entry.get("episode") == 0, f"a new world is at episode 0, tick 0: {entry}")
    expect(all(s == HELD for s in entry.get("seats", {}).values()), f"join: true holds every seat: {entry}")
    plain = a.create(join=False, copies=2)
    expect(len(plain["worlds"]) == 2, f"copies 2 should make two worlds: {plain['worlds']}")
    expect("tokens" not in plain and "obs" not in plain, "created carries tokens and obs only with join: true")


def _shared_world(ctx: Context, **fields) -> tuple[Peer, Peer, int, dict, list[str]]:
    """A world of ``a``'s where ``a`` holds the first seat and ``b`` the second (the rest stay free)."""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=False, **fields)
    world, spec = created["worlds"][0], created["spec"]
    agents = agents_of(spec, at_least=2)
    for peer, seat in ((a, agents[0]), (b, agents[1])):
        joined = peer.ok("join", world=world, seats=[seat])
        expect(list(joined.get("seats", {})) == [seat], f"join of {seat!r} should grant it: {short(joined)}")
    return a, b, world, spec, agents


@check
def check_lockstep(ctx: Context) -> None:
    """two clients in one world: it steps only when both acted; each reply has only its seats; filled names the rest"""
    a, b, world, spec, agents = _shared_world(ctx, wait_for_seats=False, deadline_ms=LONG_DEADLINE_MS)
    first = act(a, world, spec, [agents[0]])
    a.quiet(first, QUIET_S, "the world stepped before every held seat acted")
    a.refused("act", ALREADY_ACTED, "the seat acted this tick", world=world, actions=actions_for(spec, agents[:1]))
    a.refused("act", NOT_YOUR_SEAT, "b holds that seat", world=world, actions=actions_for(spec, agents[1:2]))
    second = act(b, world, spec, [agents[1]])
    step_a, step_b = a.answer("act", first), b.answer("act", second)
    expect_step(step_a, spec, [agents[0]], "a's step")
    expect_step(step_b, spec, [agents[1]], "b's step")
    expect(step_a["tick"] == step_b["tick"] == 1, f"both replies are of tick 1: {step_a['tick']}, {step_b['tick']}")
    free = {agent: FREE for agent in agents[2:]}
    for who, step in (("a", step_a), ("b", step_b)):
        expect(step["filled"] == free, f"{who}'s step.filled should be {free} (free seats only): {step['filled']}")
    again = [act(a, world, spec, [agents[0]]), act(b, world, spec, [agents[1]])]
    expect(a.answer("act", again[0])["tick"] == 2 and b.answer("act", again[1])["tick"] == 2, "tick 2 came next")


@check
def check_deadline_fill(ctx: Context) -> None:
    """a held seat that does not act by the deadline gets the fill action, named late in filled"""
    a, b, world, spec, agents = _shared_world(ctx, wait_for_seats=False, deadline_ms=SHORT_DEADLINE_MS)
    first = act(a, world, spec, [agents[0]])
    step = a.answer("act", first)
    expect_step(step, spec, [agents[0]], "a's step")
    expected = {agents[1]: LATE, **{agent: FREE for agent in agents[2:]}}
    expect(step["filled"] == expected, f"step.filled should be {expected}: {step['filled']}")
    entry = world_entry(a, world)
    expect(entry is not None and entry.get("late", 0) >= 1, f"list.late should count the late fill: {short(entry)}")


@check
def check_wait_for_seats(ctx: Context) -> None:
    """with wait_for_seats, early actions wait (no deadline) until every seat has been held once"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=False, wait_for_seats=True, deadline_ms=SHORT_DEADLINE_MS)
    world, spec = created["worlds"][0], created["spec"]
    agents = agents_of(spec, at_least=2)
    a.ok("join", world=world, seats=[agents[0]])
    early = act(a, world, spec, [agents[0]])
    a.quiet(early, max(QUIET_S, 3 * SHORT_DEADLINE_MS / 1000), "the world stepped before all its seats were held")
    b.ok("join", world=world, seats=agents[1:])  # the world starts now; b does not act, so its seats come late
    step = a.answer("act", early)
    expect_step(step, spec, [agents[0]], "a's step")
    expected = {agent: LATE for agent in agents[1:]}
    expect(step["filled"] == expected, f"step.filled should be {expected}: {step['filled']}")
    expect(step["tick"] == 1, f"the first step is tick 1: {step['tick']}")


def _play_episode(peer: Peer, world: int, spec: dict, seats: list[str]) -> tuple[list[dict], float]:
    """Act for every seat until the episode is over; the step replies and the sum of their rewards."""
    steps, total = [], 0.0
    for _ in range(MAX_EPISODE_STEPS):
        step = peer.answer("act", act(peer, world, spec, seats))
        steps.append(step)
        total += sum(step.get("rewards", {}).values())
        if step.get("episode_over"):
            return steps, total
    raise Skip(f"no episode ended in {MAX_EPISODE_STEPS} steps of the fixed action")


@check
def check_auto_reset(ctx: Context) -> None:
    """an episode's last step carries final_obs and the next episode's first obs; ticks, episodes and list stats"""
    a = ctx.peer("a")
    created = a.create(join=True, seed=0)
    world, spec = created["worlds"][0], created["spec"]
    seats = agents_of(spec)
    steps, total = _play_episode(a, world, spec, seats)
    for tick, step in enumerate(steps[:-1], start=1):
        expect_step(step, spec, seats, f"step {tick}")
        expect(step["tick"] == tick and step["episode"] == 0, f"step {tick} says tick {step['tick']}")
        expect("final_obs" not in step, f"step {tick} carries final_obs before the episode ended")
    last = steps[-1]
    expect(
        isinstance(last.get("final_obs"), dict) and last["final_obs"], f"the last step lacks final_obs: {short(last)}"
    )
    for agent, value in last["final_obs"].items():
        expect_value(spec["observation_spaces"][agent], value, f"final_obs/{agent}")
    expect(last.get("tick") == 0 and last.get("episode") == 1, f"after auto-reset, tick 0 of episode 1: {short(last)}")
    expect(last.get("obs"), "the auto-reset step carries the new episode's first obs")
    expect(
        any(last["terminated"].values()) or any(last["truncated"].values()),
        "the step that ends an episode marks some agent terminated or truncated",
    )
    entry = world_entry(a, world)
    expect(entry is not None, f"world {world} is not in its owner's list")
    expect(entry.get("episode") == 1 and entry.get("tick") == 0, f"list says episode 1, tick 0: {short(entry)}")
    returns = entry.get("returns")
    expect(isinstance(returns, list) and len(returns) == 1, f"list.returns should hold the one episode: {returns}")
    expect(math.isclose(returns[0], total, rel_tol=1e-3, abs_tol=1e-3), f"list.returns {returns} != {total:.4f}")
    expect(_number(entry.get("steps_per_s")), f"list.steps_per_s should be a number: {short(entry)}")
    expect(isinstance(entry.get("rewards"), dict), f"list.rewards should be a map: {short(entry)}")


@check
def check_episode_over(ctx: Context) -> None:
    """without auto_reset, acts after the episode's end get episode_over until the owner resets"""
    a = ctx.peer("a")
    created = a.create(join=True, seed=0, auto_reset=False)
    world, spec = created["worlds"][0], created["spec"]
    seats = agents_of(spec)
    steps, _ = _play_episode(a, world, spec, seats)
    expect("final_obs" not in steps[-1], "a world without auto_reset does not reset (no final_obs)")
    a.refused("act", EPISODE_OVER, "the episode ended", world=world, actions=actions_for(spec, seats))
    reset = a.ok("reset", world=world)
    expect(reset.get("tick") == 0 and reset.get("episode") == 1, f"reset starts episode 1 at tick 0: {short(reset)}")
    step = a.answer("act", act(a, world, spec, seats))
    expect(step.get("tick") == 1 and step.get("episode") == 1, f"after reset, tick 1 of episode 1: {short(step)}")


@check
def check_reset(ctx: Context) -> None:
    """reset is the owner's (not_owner otherwise), interrupts pending acts, and a seed gives the same observations"""
    a, b, world, spec, agents = _shared_world(ctx, wait_for_seats=False, deadline_ms=LONG_DEADLINE_MS)
    pending = act(b, world, spec, [agents[1]])
    b.refused("reset", NOT_OWNER, "only the owner may reset", world=world)
    first = a.ok("reset", world=world, seed=7)
    b.refusal("act", pending, INTERRUPTED, "the owner reset the world")
    expect(first.get("tick") == 0 and first.get("episode") == 1, f"reset is tick 0 of the next episode: {short(first)}")
    expect(sorted(first.get("obs", {})) == sorted(first.get("agents", [])), "reset gives every live agent's obs")
    expect(isinstance(first.get("infos"), dict), f"observation.infos should be a map: {short(first)}")
    second = a.ok("reset", world=world, seed=7)
    for agent, value in first["obs"].items():
        expect(
            np.array_equal(np.asarray(value), np.asarray(second["obs"].get(agent))),
            f"two resets with seed 7 gave different observations of {agent!r}",
        )
    a.refused("reset", BAD_REQUEST, "a seed is a non-negative int", world=world, seed=-3)


@check
def check_state(ctx: Context) -> None:
    """state gives the world's global state of spec.state_space to its members; not_your_seat to others"""
    a, stranger = ctx.peer("a"), ctx.peer("stranger")
    created = a.create(join=True, seed=0)
    world, spec = created["worlds"][0], created["spec"]
    stranger.refused("state", NOT_YOUR_SEAT, "the sender is not in the world", world=world)
    if spec.get("state_space") is None:
        a.refused("state", BAD_REQUEST, "the spec's state_space is nil", world=world)
        return
    state = a.ok("state", world=world)
    expect(state.get("world") == world and state.get("tick") == 0, f"state names the world and tick: {short(state)}")
    expect_value(spec["state_space"], state.get("state"), "state.state")


@check
def check_render(ctx: Context) -> None:
    """render gives an (H, W, 3) uint8 frame, the same one within a tick (skipped if the scenario does not draw)"""
    a, stranger = ctx.peer("a"), ctx.peer("stranger")
    created = a.request("create", scenario=ctx.scenario, join=True, seed=0, render=True)
    if created["op"] == ERROR_OP and created["code"] in (SCENARIO_NOT_ALLOWED, SCENARIO_ERROR):
        raise Skip(f"the server cannot build this scenario to draw: {created['code']}: {created['message']}")
    expect(created["op"] == "created", f"create with render: true should get created: {short(created)}")
    a.created += created["worlds"]
    if not created.get("render"):
        raise Skip("this scenario does not draw here (created.render is false)")
    world, spec = created["worlds"][0], created["spec"]
    reply = a.request("render", world=world)
    expect(reply["op"] == "frame", f"render should get a frame: {short(reply)}")
    frame = reply.get("frame")
    expect(
        isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3,
        f"frame should be an (H, W, 3) uint8 array: {short(reply)}",
    )
    expect(reply.get("world") == world and reply.get("tick") == 0, f"frame names world and tick 0: {short(reply)}")
    again = a.ok("render", world=world)
    expect(np.array_equal(again["frame"], frame), "a second render within one tick gave another frame")
    a.answer("act", act(a, world, spec, agents_of(spec)))
    later = a.ok("render", world=world)
    expect(later.get("tick") == 1, f"the frame after a step is of tick 1: {short(later)}")
    stranger.refused("render", NOT_YOUR_SEAT, "the sender is not in the world", world=world)
    plain = a.create(join=True, seed=0)["worlds"][0]
    a.refused("render", BAD_REQUEST, "the world was not created with render: true", world=plain)
