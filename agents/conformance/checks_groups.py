"""Checks of named groups and the owner's seat and state rules (docs/protocol.md, 'Worlds, seats, roles',
'create', 'join_group', 'state')."""

from __future__ import annotations

import secrets

from agora_marl.agents.conformance.base import Context, check
from agora_marl.agents.conformance.checks_worlds import agents_of
from agora_marl.agents.conformance.peer import Skip, expect, short
from agora_marl.envserver.protocol.vocabulary import (
    BAD_TOKEN,
    NOT_ALLOWED,
    NOT_OWNER,
    SEAT_TAKEN,
    UNKNOWN_GROUP,
    UNKNOWN_SEAT,
)

K = 2


def _name() -> str:
    return f"conformance-{secrets.token_hex(4)}"


@check
def check_join_group(ctx: Context) -> None:
    """a second session finds a group's worlds by name and takes the same seats of each (invitation-only seats need
    the invite_token), all or none; a name is its owner's and unknown names get unknown_group"""
    owner, joiner, third = ctx.peer("owner"), ctx.peer("joiner"), ctx.peer("third")
    name = _name()
    first = owner.create(copies=1, seed=0, wait_for_seats=False, deadline_ms=10_000, group=name)
    agents = agents_of(first["spec"], at_least=2)
    mine = agents[-1:]
    more = owner.create(copies=K - 1, seed=1, wait_for_seats=False, deadline_ms=10_000, group=name, invite_only=mine)
    worlds = first["worlds"] + more["worlds"]
    expect(first.get("group") == name, f"created.group should echo the name: {short(first)}")
    expect(isinstance(more.get("invite_token"), str) and more["invite_token"], f"no invite_token: {short(more)}")
    joiner.refused("join_group", UNKNOWN_GROUP, "no group has that name", group=_name(), seats=mine)
    joiner.refused("join_group", UNKNOWN_SEAT, "a pattern that names no agent", group=name, seats=["no-such-agent*"])
    joiner.refused("join_group", NOT_ALLOWED, "invitation-only seats without the invite token", group=name, seats=mine)
    joiner.refused("join_group", BAD_TOKEN, "a wrong invite token", group=name, seats=mine, invite_token="0" * 32)
    third.ok("join", world=worlds[-1], seats=agents[:1])
    joiner.refused("join_group", SEAT_TAKEN, "a seat of one world is held", group=name, seats=agents[:1])
    third.refused("create", NOT_OWNER, "a group is its owner's", scenario=owner.scenario, group=name, copies=1)
    joined = joiner.ok("join_group", group=name, seats=mine, invite_token=more["invite_token"])
    expect(joined.get("worlds") == worlds, f"joined_group.worlds should be {worlds} in order: {short(joined)}")
    expect(joined.get("seats") == mine, f"joined_group.seats should be {mine}: {short(joined)}")
    tokens = joined.get("tokens")
    expect(
        isinstance(tokens, list) and len(tokens) == len(worlds) and all(set(t) == set(mine) for t in tokens),
        f"joined_group.tokens should hold one map of {mine} per world: {short(joined)}",
    )
    obs = joined.get("obs") or {}
    expect(sorted(obs) == sorted(str(w) for w in worlds), f"joined_group.obs should cover every world: {short(obs)}")
    for key in ("tick", "episode"):
        expect(joined.get(key) == [0] * len(worlds), f"joined_group.{key} should be 0 for each world: {short(joined)}")
    listed = [w for w in owner.ok("list").get("worlds", []) if w.get("world") in worlds]
    expect(
        listed and all(w.get("group") == name for w in listed), f"list should name the worlds' group: {short(listed)}"
    )
    free = [world for world in worlds if world != worlds[-1]]
    seats = {w["world"]: w["seats"] for w in listed}
    expect(
        all(seats[w][agents[0]] == "free" for w in free),
        f"the refused join_group took no seat: {short(seats)}",
    )


@check
def check_share_state(ctx: Context) -> None:
    """a seat holder (not the owner) reads the global state only where the owner created the world with
    share_state (else not_allowed); the owner always may"""
    owner, holder = ctx.peer("owner"), ctx.peer("holder")
    private = owner.create(copies=1, seed=0, wait_for_seats=False)
    shared = owner.create(copies=1, seed=0, wait_for_seats=False, share_state=True)
    agents = agents_of(private["spec"], at_least=2)
    if private["spec"].get("state_space") is None:
        raise Skip("the scenario has no global state")
    for created in (private, shared):
        holder.ok("join", world=created["worlds"][0], seats=agents[:1])
    holder.refused("state", NOT_ALLOWED, "a holder of a world that keeps its state", world=private["worlds"][0])
    holder.ok("state", world=shared["worlds"][0])
    owner.ok("state", world=private["worlds"][0])
