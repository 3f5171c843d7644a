"""Who holds which seat has one owner (envserver/seats.py): after every way a seat changes hands (create with join,
join, a takeover with its token, leave, join_group, close, bye), the seat table and every world's own seats agree."""

from __future__ import annotations

from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"


def _check(server, clients: list[RawClient]) -> dict[str, set]:
    """Assert that the seat table and the worlds' seats say the same; return each client's seats by its name."""
    from_worlds: dict[bytes, set] = {}
    for world in server.worlds.values():
        for agent, seat in world.seats.items():
            if seat.holder is not None:
                from_worlds.setdefault(seat.holder, set()).add((world.world_id, agent))
    from_table = {s.identity: set(server.seat_table.seats_of(s.identity)) for s in server.sessions}
    assert {k: v for k, v in from_table.items() if v} == from_worlds
    for identity in from_worlds:
        assert server.seat_table.holds_any(identity) and server.sessions.get(identity) is not None
    seats = {}
    for name, client in zip("ABC", clients, strict=False):
        session = server.sessions.by_secret(client.secret)
        seats[name] = set(server.seat_table.seats_of(session.identity)) if session else set()
    return seats


def test_the_seat_table_agrees_with_the_worlds_through_every_change(make_server):
    server = make_server()
    a, b = RawClient(server.address), RawClient(server.address)
    try:
        created = a.ok({"op": "create", "scenario": SPREAD, "seed": 0, "copies": 2, "join": True})
        w1, w2 = created["worlds"]
        agents = ["agent_0", "agent_1", "agent_2"]
        assert _check(server, [a, b])["A"] == {(w, x) for w in (w1, w2) for x in agents}

        token = created["tokens"][0]["agent_0"]
        b.ok({"op": "join", "world": w1, "seats": ["agent_0"], "tokens": {"agent_0": token}})  # a takeover
        seats = _check(server, [a, b])
        assert seats["B"] == {(w1, "agent_0")} and (w1, "agent_0") not in seats["A"]

        b.ok({"op": "leave", "world": w1})
        seats = _check(server, [a, b])
        assert seats["B"] == set() and server.worlds[w1].seats["agent_0"].state == "free"

        grouped = a.ok({"op": "create", "scenario": SPREAD, "seed": 1, "copies": 2, "group": "g"})
        a.ok({"op": "join", "world": grouped["worlds"][0], "seats": ["agent_0", "agent_2"]})
        b.ok({"op": "join_group", "group": "g", "seats": ["agent_1"]})
        seats = _check(server, [a, b])
        assert seats["B"] == {(w, "agent_1") for w in grouped["worlds"]}

        a.ok({"op": "close", "world": grouped["worlds"][1]})
        seats = _check(server, [a, b])
        assert seats["B"] == {(grouped["worlds"][0], "agent_1")}

        b.ok({"op": "bye"})
        seats = _check(server, [a, b])
        assert seats["B"] == set() and server.worlds[grouped["worlds"][0]].seats["agent_1"].state == "free"

        a.ok({"op": "bye"})
        _check(server, [a, b])
        assert not server.worlds and not server.sessions
    finally:
        a.close()
        b.close()
