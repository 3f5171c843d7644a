"""Checks of who may do what: observers and public worlds, what list shows, seat tokens and takeover, leave, close,
ownership, and refused actions (docs/protocol.md, 'Worlds, seats, roles', 'join', 'leave', 'close', 'act')."""

from __future__ import annotations

from agora_marl.agents.conformance.base import LONG_DEADLINE_MS, QUIET_S, Context, check
from agora_marl.agents.conformance.checks_worlds import act, actions_for, agents_of, expect_step, world_entry
from agora_marl.agents.conformance.peer import Skip, expect, short
from agora_marl.agents.conformance.values import illegal, legal
from agora_marl.envserver.protocol.vocabulary import (
    BAD_ACTION,
    BAD_TOKEN,
    FREE,
    HELD,
    INTERRUPTED,
    NOT_ALLOWED,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    OBSERVER,
    SEAT_TAKEN,
    UNKNOWN_SEAT,
    UNKNOWN_WORLD,
)

_LIST_FIELDS = {
    "world": int,
    "scenario": str,
    "agents": list,
    "seats": dict,
    "holders": dict,
    "observers": int,
    "public": bool,
    "render": bool,
    "tick": int,
    "episode": int,
    "steps_per_s": (int, float),
    "late": int,
    "returns": list,
    "rewards": dict,
}


@check
def check_observer(ctx: Context) -> None:
    """an observer needs the observer_token (not_allowed without, bad_token if wrong) and then sees every agent"""
    owner, watcher = ctx.peer("owner"), ctx.peer("watcher")
    created = owner.create(join=True, seed=0)
    world, agents = created["worlds"][0], agents_of(created["spec"])
    watcher.refused("join", NOT_ALLOWED, "a private world admits invited observers only", world=world, role=OBSERVER)
    watcher.refused("observe", NOT_YOUR_SEAT, "the sender is neither observer nor holder", world=world)
    watcher.refused(
        "join", BAD_TOKEN, "that is not the observer token", world=world, role=OBSERVER, observer_token="0" * 32
    )
    joined = watcher.ok("join", world=world, role=OBSERVER, observer_token=created["observer_token"])
    expect(joined.get("seats") == {}, f"an observer holds no seat: {short(joined)}")
    expect(
        sorted(joined.get("obs", {})) == sorted(agents),
        f"joined.obs of an observer covers every agent: {short(joined)}",
    )
    observed = watcher.ok("observe", world=world)
    expect(sorted(observed.get("obs", {})) == sorted(agents), "an observer's observe covers every agent")
    if created["spec"].get("state_space") is not None:
        watcher.ok("state", world=world)
    watcher.refused(
        "act", NOT_YOUR_SEAT, "an observer holds no seat", world=world, actions=actions_for(created["spec"], agents[:1])
    )
    entry = world_entry(owner, world)
    expect(entry is not None and entry.get("observers") == 1, f"list.observers should count 1: {short(entry)}")


@check
def check_public_world(ctx: Context) -> None:
    """a public world admits any observer and anyone's observe"""
    owner, anyone = ctx.peer("owner"), ctx.peer("anyone")
    created = owner.create(join=True, seed=0, public=True)
    world, agents = created["worlds"][0], agents_of(created["spec"])
    observed = anyone.ok("observe", world=world)
    expect(sorted(observed.get("obs", {})) == sorted(agents), "anyone's observe of a public world covers every agent")
    anyone.ok("join", world=world, role=OBSERVER)


@check
def check_list_visibility(ctx: Context) -> None:
    """list shows a session its own worlds, those it holds a seat of or observes, and public ones; never others'"""
    a, b = ctx.peer("a"), ctx.peer("b")
    private = a.create(join=False, wait_for_seats=False)
    hidden, spec = private["worlds"][0], private["spec"]
    public = a.create(join=True, public=True)["worlds"][0]
    watched = a.create(join=True)
    seen = [w.get("world") for w in b.ok("list").get("worlds", [])]
    expect(public in seen, f"b's list lacks a's public world {public}: {seen}")
    expect(hidden not in seen, f"b's list shows a's private world {hidden}: {seen}")
    expect(watched["worlds"][0] not in seen, f"b's list shows a's private world {watched['worlds'][0]}: {seen}")
    seat = agents_of(spec)[0]
    b.ok("join", world=hidden, seats=[seat])
    b.ok("join", world=watched["worlds"][0], role=OBSERVER, observer_token=watched["observer_token"])
    listing = b.ok("list").get("worlds", [])
    seen = [w.get("world") for w in listing]
    expect(hidden in seen, f"b holds a seat of {hidden}, yet its list lacks it: {seen}")
    expect(watched["worlds"][0] in seen, f"b observes {watched['worlds'][0]}, yet its list lacks it: {seen}")
    entry = next(w for w in listing if w.get("world") == hidden)
    for key, kind in _LIST_FIELDS.items():
        value = entry.get(key)
        typed = isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)
        expect(typed, f"list entry field {key!r} should be of {kind}, got {value!r}")
    expect(entry["seats"].get(seat) == HELD, f"b's seat should be held: {entry['seats']}")
    expect(all(s == FREE for other, s in entry["seats"].items() if other != seat), f"the other seats are free: {entry}")
    expect(entry["holders"].get(seat) == b.name, f"holders names b's hello name {b.name!r}: {entry['holders']}")
    expect(entry["public"] is False, "a world created without public: true is not public")
    expect(entry["scenario"] == ctx.scenario, f"list.scenario should be {ctx.scenario!r}: {entry['scenario']!r}")


@check
def check_takeover(ctx: Context) -> None:
    """a seat's token takes it over and interrupts its holder's pending act for that seat (not its acts for other
    seats); takeover false gets seat_taken"""
    a, b, c = ctx.peer("a"), ctx.peer("b"), ctx.peer("c")
    created = a.create(join=True, seed=0, deadline_ms=LONG_DEADLINE_MS)
    world, spec = created["worlds"][0], created["spec"]
    agents = agents_of(created["spec"], at_least=2)
    seat, token = agents[0], created["tokens"][0][agents[0]]
    pending = act(a, world, spec, [seat])  # waits: a's other seats have not acted
    other = act(a, world, spec, [agents[1]])  # a request of its own, for another seat
    c.refused("join", SEAT_TAKEN, "another live session holds it", world=world, seats=[agents[1]])
    c.refused("join", BAD_TOKEN, "that is not the seat's token", world=world, tokens={seat: "0" * 32})
    c.refused("join", UNKNOWN_SEAT, "the world has no such agent", world=world, seats=["no-such-agent"])
    joined = b.ok("join", world=world, tokens={seat: token})
    new_token = joined.get("seats", {}).get(seat)
    expect(isinstance(new_token, str), f"the takeover grants the seat with a token: {short(joined)}")
    a.refusal("act", pending, INTERRUPTED, "its seat was taken over with the token")
    a.quiet(other, QUIET_S, "taking over one seat interrupted the old holder's act for another seat")
    a.refused("act", NOT_YOUR_SEAT, "the seat is b's now", world=world, actions=actions_for(spec, [seat]))
    c.refused(
        "join",
        SEAT_TAKEN,
        "takeover: false never takes a held seat",
        world=world,
        tokens={seat: new_token},
        takeover=False,
    )
    # The world steps with b's new seat and a's others (agents[1] acted already).
    rest = act(a, world, spec, agents[2:]) if len(agents) > 2 else None
    mine = act(b, world, spec, [seat])
    expect_step(b.answer("act", mine), spec, [seat], "b's step")
    expect_step(a.answer("act", other), spec, [agents[1]], "a's step for the seat it kept")
    if rest is not None:
        expect_step(a.answer("act", rest), spec, agents[2:], "a's step")


@check
def check_leave(ctx: Context) -> None:
    """leave frees the seats (their tokens void), others stay; leaving a seat not held gets not_your_seat"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=True, seed=0)
    world, agents = created["worlds"][0], agents_of(created["spec"], at_least=2)
    seat, token = agents[0], created["tokens"][0][agents[0]]
    left = a.ok("leave", world=world, seats=[seat])
    expect(left.get("world") == world and left.get("seats") == [seat], f"left names the world and seats: {left}")
    entry = world_entry(a, world)
    expect(entry is not None and entry["seats"].get(seat) == FREE, f"a left seat is free: {short(entry)}")
    expect(all(entry["seats"][x] == HELD for x in agents[1:]), f"the other seats are still held: {entry['seats']}")
    a.refused("leave", NOT_YOUR_SEAT, "a no longer holds it", world=world, seats=[seat])
    b.refused("join", BAD_TOKEN, "the token of a left seat is void", world=world, tokens={seat: token})
    joined = b.ok("join", world=world, seats=[seat])
    expect(list(joined.get("seats", {})) == [seat], f"a free seat can be joined: {short(joined)}")
    left = a.ok("leave", world=world)
    expect(sorted(left.get("seats", [])) == sorted(agents[1:]), f"leave with no seats leaves all a holds: {left}")


@check
def check_close(ctx: Context) -> None:
    """close is the owner's (not_owner otherwise), interrupts pending acts, and the world is then unknown"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=False, wait_for_seats=False, deadline_ms=LONG_DEADLINE_MS)
    world, spec = created["worlds"][0], created["spec"]
    agents = agents_of(spec, at_least=2)
    a.ok("join", world=world, seats=[agents[0]])
    b.ok("join", world=world, seats=[agents[1]])
    pending = act(b, world, spec, [agents[1]])
    b.quiet(pending, QUIET_S / 3, "the world stepped before a acted")
    b.refused("close", NOT_OWNER, "only the owner may close", world=world)
    closed = a.ok("close", world=world)
    expect(closed.get("world") == world, f"closed names the world: {closed}")
    b.refusal("act", pending, INTERRUPTED, "the world was closed")
    b.refused("observe", UNKNOWN_WORLD, "the world is closed", world=world)


@check
def check_owner_token(ctx: Context) -> None:
    """join with the owner_token takes the ownership (reset, close); a wrong one gets bad_token"""
    a, b = ctx.peer("a"), ctx.peer("b")
    created = a.create(join=True, seed=0)
    world = created["worlds"][0]
    b.refused("join", BAD_TOKEN, "that is not the owner token", world=world, role=OBSERVER, owner_token="0" * 32)
    b.ok("join", world=world, role=OBSERVER, owner_token=created["owner_token"])
    b.created.append(world)  # b closes it now
    a.refused("close", NOT_OWNER, "the ownership moved to b", world=world)
    b.ok("reset", world=world)
    b.ok("close", world=world)


@check
def check_bad_action(ctx: Context) -> None:
    """an action outside its space gets bad_action, and none of the request's actions count"""
    a = ctx.peer("a")
    created = a.create(join=True, seed=0)
    world, spec = created["worlds"][0], created["spec"]
    agents = agents_of(spec)
    wrong = illegal(spec["action_spaces"][agents[-1]])
    if wrong is None:
        raise Skip(f"the check makes illegal actions of Discrete, Box and MultiDiscrete spaces only: {agents[-1]}")
    actions = {**{agent: legal(spec["action_spaces"][agent]) for agent in agents[:-1]}, agents[-1]: wrong}
    a.refused("act", BAD_ACTION, f"{wrong!r:.40} is not in the space of {agents[-1]!r}", world=world, actions=actions)
    step = a.answer("act", act(a, world, spec, agents))  # already_acted if the refused request had counted
    expect(step.get("tick") == 1, f"the refused act moved nothing: the next step is tick 1: {short(step)}")
