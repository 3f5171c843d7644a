"""Authority comes from secrets the server issued, never from the transport; who may watch is the owner's choice.

Each test plays what a hostile or careless client would do over a real socket: reuse another connection's ZeroMQ
routing id, skip ``hello``, guess secrets, observe worlds it was not invited to, flood ``hello``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from agora_marl.agents import AgentClient, ServerError
from agora_marl.envserver.protocol import pack, unpack
from agora_marl.envserver.protocol.connection import find_operator_secret, operator_file
from tests.procs import wait_for_connection_file
from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"
ACT = {"agent_0": 1, "agent_1": 2, "agent_2": 0}


def _dealer(address: str, routing_id: bytes) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTING_ID, routing_id)
    socket.connect(address)
    return socket


def _request(socket: zmq.Socket, message: dict, request_id: int = 1) -> dict:
    socket.send_multipart(pack({"id": request_id, **message}))
    assert socket.poll(5000), "no reply from the server"
    return unpack(socket.recv_multipart())


def test_a_reused_routing_id_gets_none_of_the_victims_authority(make_server):
    """A peer that takes a disconnected victim's routing id (known here from the server's table; a blind guess
    otherwise) gets nothing done: for a while its messages read as the closed connection's (their replies go
    nowhere), then as a stranger's (no_session). Authority is in the secret."""
    server = make_server(heartbeat_timeout_s=30.0)  # the victim's session outlives its connection
    victim = RawClient(server.address)
    created = victim.ok({"op": "create", "scenario": SPREAD, "seed": 0, "join": True})
    world, secret = created["worlds"][0], victim.secret
    route = next(s.route for s in server.sessions.values() if s.secret == secret)
    victim.close()
    time.sleep(0.2)

    attacker = _dealer(server.address, route)  # the same routing id, free again
    for message in (
        {"op": "close", "world": world},
        {"op": "observe", "world": world},
        {"op": "act", "world": world, "actions": ACT},
        {"op": "close", "world": world, "secret": "guessed"},
        {"op": "join", "world": world, "role": "observer", "secret": "guessed"},
    ):
        attacker.send_multipart(pack({"id": 1, **message}))
        if attacker.poll(500):
            reply = unpack(attacker.recv_multipart())
            assert reply["op"] == "error" and reply["code"] == "no_session", (message, reply)
    attacker.close()
    assert world in server.worlds, "the world survived every forged request"

    # The real owner, back on a new connection with its secret, still owns it.
    again = RawClient(server.address, hello=False)
    again.secret = secret
    assert again.ok({"op": "observe", "world": world})["world"] == world
    assert again.ok({"op": "close", "world": world})["op"] == "closed"


def test_only_hello_and_ping_go_without_a_session(server):
    raw = RawClient(server.address, hello=False)
    assert raw.request({"op": "ping"})["op"] == "pong"
    for op in ("list", "create", "join", "observe", "step_batch", "render"):
        reply = raw.request({"op": op, "scenario": SPREAD, "world": 1, "worlds": [1]})
        assert reply["code"] == "no_session" and "hello" in reply["hint"], reply
    welcome = raw.ok({"op": "hello", "name": "me"})
    assert len(welcome["secret"]) >= 24 and welcome["session"] != welcome["secret"]
    raw.secret = welcome["secret"]
    assert raw.ok({"op": "hello", "name": "me again"})["secret"] == welcome["secret"], "hello with a secret renews it"


def test_the_client_library_says_hello_by_itself_and_again_when_forgotten(make_server):
    server = make_server(heartbeat_timeout_s=0.3)
    with AgentClient(server.address, timeout_s=5.0) as owner, AgentClient(server.address, timeout_s=5.0) as client:
        owner.hello(keep_alive_s=60.0)
        world = owner.create(SPREAD, seed=0, wait_for_seats=False).worlds[0]
        joined = client.join(world)  # no explicit hello
        first = client.welcome["secret"]
        deadline = time.monotonic() + 10
        while len(server.sessions) > 1:  # silent past the heartbeat timeout: the session goes, its seats are lost
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(ServerError, match="no_session"):
            client.act(world, ACT)
        assert client.list_worlds() == [], "the new session sees no private world"
        assert client.welcome["secret"] != first
        again = client.join(world, tokens=joined.seats, takeover=False)  # seats back with their tokens
        assert set(again.seats) == set(ACT)
        assert client.act(world, ACT).tick == 1


def test_observers_come_by_invitation_public_worlds_and_operators(server):
    owner, stranger = RawClient(server.address), RawClient(server.address)
    created = owner.ok({"op": "create", "scenario": SPREAD, "seed": 0, "join": True})
    world = created["worlds"][0]
    public = owner.ok({"op": "create", "scenario": SPREAD, "seed": 1, "public": True})["worlds"][0]

    assert {w["world"] for w in stranger.ok({"op": "list"})["worlds"]} == {public}
    assert stranger.request({"op": "join", "world": world, "role": "observer"})["code"] == "not_allowed"
    wrong = {"op": "join", "world": world, "role": "observer", "observer_token": "0" * 32}
    assert stranger.request(wrong)["code"] == "bad_token"
    for refused in ("observe", "state", "render"):
        assert stranger.request({"op": refused, "world": world})["code"] == "not_your_seat"
    assert stranger.ok({"op": "join", "world": public, "role": "observer"})["op"] == "joined"

    invited = {"op": "join", "world": world, "role": "observer", "observer_token": created["observer_token"]}
    stranger.ok(invited)
    assert set(stranger.ok({"op": "observe", "world": world})["obs"]) == set(ACT)
    assert {w["world"] for w in stranger.ok({"op": "list"})["worlds"]} == {world, public}

    tool = RawClient(server.address, hello=False)
    assert tool.request({"op": "hello", "operator": "not-it"})["code"] == "not_allowed"
    tool.secret = tool.ok({"op": "hello", "name": "watch", "operator": server.operator_secret})["secret"]
    listed = {w["world"]: w for w in tool.ok({"op": "list"})["worlds"]}
    assert set(listed) >= {world, public} and listed[world]["observers"] == 1
    assert set(tool.ok({"op": "observe", "world": world})["obs"]) == set(ACT)


def test_render_draws_a_world_once_per_tick_for_those_who_may_watch(server):
    owner = AgentClient(server.address, timeout_s=10.0, name="painter")
    try:
        created = owner.create(SPREAD, seed=0, join=True, render=True)
        world = created.worlds[0]
        assert created.render
        first = owner.render(world)
        assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
        assert owner.render(world) is not None and np.array_equal(owner.render(world), first)
        owner.act(world, ACT)
        owner.act(world, ACT)  # mpe2 moves less than a pixel in its first step
        assert not np.array_equal(owner.render(world), first), "the frame follows the world"

        plain = owner.create(SPREAD, seed=0, join=True).worlds[0]
        with pytest.raises(ServerError, match="does not render"):
            owner.render(plain)
        with AgentClient(server.address, timeout_s=10.0) as watcher:
            with pytest.raises(ServerError, match="not_your_seat"):
                watcher.render(world)
            watcher.join(world, role="observer", observer_token=created.observer_token)
            assert watcher.render(world).shape == first.shape
    finally:
        owner.close()


def test_list_shows_holders_rates_late_fills_and_returns(server):
    with (
        AgentClient(server.address, timeout_s=10.0, name="alice") as alice,
        AgentClient(server.address, timeout_s=10.0, name="bob") as bob,
    ):
        world = alice.create(SPREAD, config={"max_cycles": 3}, seed=0, deadline_ms=50, wait_for_seats=False).worlds[0]
        alice.join(world, seats=["agent_0", "agent_1"])
        bob.join(world, seats=["agent_2"])
        for _ in range(3):
            bob_act = bob.send_act(world, {"agent_2": 0})
            alice.act(world, {"agent_0": 1, "agent_1": 1})
            bob.recv(bob_act)
        bob.leave(world)
        alice.act(world, {"agent_0": 1, "agent_1": 1})  # agent_2 is free now: filled, but not late
        bob.hello(name="bob")
        bob.join(world, seats=["agent_2"])
        alice.act(world, {"agent_0": 1, "agent_1": 1})  # bob never acts: filled at the deadline, late
        entry = next(w for w in alice.list_worlds() if w["world"] == world)
        assert entry["steps_per_s"] > 0, "the first look measures since the world was made"
        assert entry["holders"] == {"agent_0": "alice", "agent_1": "alice", "agent_2": "bob"}
        assert entry["late"] == 1 and len(entry["returns"]) == 1 and entry["returns"][0] < 0
        assert set(entry["rewards"]) == set(ACT) and entry["render"] is False and entry["public"] is False


def test_a_vector_group_keeps_its_copies_returns(server):
    with AgentClient(server.address, timeout_s=10.0) as client:
        worlds = client.create("foraging_v0", config={"max_cycles": 2}, seed=0, copies=2, join=True).worlds
        actions = {"agent_0": np.zeros(2, np.int64), "agent_1": np.zeros(2, np.int64)}
        for _ in range(2):
            client.step_batch(worlds, actions)
        listed = {w["world"]: w for w in client.list_worlds()}
        assert all(len(listed[w]["returns"]) == 1 for w in worlds)
        assert set(listed[worlds[0]]["rewards"]) == {"agent_0", "agent_1"}


def test_a_flood_of_hellos_is_bounded_and_the_others_are_still_served(make_server):
    server = make_server(max_sessions=3)
    first = RawClient(server.address)
    RawClient(server.address), RawClient(server.address)
    flood = RawClient(server.address, hello=False)
    reply = flood.request({"op": "hello"})
    assert reply["code"] == "busy" and len(server.sessions) == 3
    assert first.ok({"op": "list"})["op"] == "worlds"


def test_agora_serve_keeps_its_operator_secret_where_only_its_user_can_read_it(tmp_path):
    addr_file = tmp_path / "server.json"
    command = [
        sys.executable,
        "-m",
        "agora_marl.envserver",
        "--bind",
        "tcp://127.0.0.1:0",
        "--addr-file",
        str(addr_file),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_connection_file(addr_file, proc)
        info = json.loads(addr_file.read_text())
        address, secret = info["addresses"][0], info["operator"]
        secret_file = operator_file(address)
        for path in (addr_file, secret_file):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        assert secret_file.read_text().strip() == secret
        assert find_operator_secret(str(addr_file)) == secret == find_operator_secret(address)

        with AgentClient(address, timeout_s=10.0) as owner:
            world = owner.create(SPREAD, seed=0).worlds[0]
            with AgentClient(address, timeout_s=10.0) as stranger:
                assert stranger.list_worlds() == []
            for operator in (addr_file, secret_file, secret):
                with AgentClient(address, timeout_s=10.0, operator=operator) as tool:
                    assert tool.hello()["operator"] is True
                    assert [w["world"] for w in tool.list_worlds()] == [world]
                    assert tool.join(world, role="observer").world == world
    finally:
        proc.terminate()
        proc.wait(timeout=30)
