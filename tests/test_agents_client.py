"""AgentClient against a real server on loopback: round trips, error codes, timeouts, async acts, lockstep."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq
from gymnasium import spaces

from agora_marl.agents import AgentClient, ServerError
from agora_marl.envserver.protocol.vocabulary import PROTOCOL_VERSION
from tests.procs import modules_loaded_by

SPREAD = "mpe2.simple_spread_v3:parallel_env"
AGENTS = ["agent_0", "agent_1", "agent_2"]


@pytest.fixture
def client(server):
    with AgentClient(server.address, timeout_s=10.0) as instance:
        yield instance


def test_session_round_trips(client):
    welcome = client.hello(name="test")
    assert welcome["protocol"] == PROTOCOL_VERSION and welcome["limits"]["max_batch"] >= 1
    assert client.welcome is welcome
    assert abs(client.ping() - time.time()) < 60
    client.heartbeat()  # never waits; its pong is dropped when it comes
    assert client.ping() > 0
    assert client.list_worlds() == []


def test_world_round_trips(client):
    created = client.create(SPREAD, seed=3, join=True)
    (world,) = created.worlds
    spec = created.spec
    assert spec.possible_agents == AGENTS
    assert spec.action_spaces["agent_0"] == spaces.Discrete(5)
    assert spec.observation_spaces["agent_0"].shape == (18,)
    assert spec.state_space.shape == (54,)
    assert set(created.tokens[0]) == set(AGENTS) and created.owner_token
    assert created.obs[world]["agent_0"] in spec.observation_spaces["agent_0"]
    [listed] = client.list_worlds()
    assert listed["world"] == world and set(listed["seats"].values()) == {"held"}

    step = client.act(world, dict.fromkeys(AGENTS, 1))
    assert step.world == world and step.tick == 1 and set(step.obs) == set(AGENTS)
    assert all(isinstance(r, float) for r in step.rewards.values())
    assert step.active == dict.fromkeys(AGENTS, True) and not step.episode_over and step.final_obs is None
    assert step.obs["agent_0"].dtype == np.float32

    observed = client.observe(world)
    np.testing.assert_array_equal(observed.obs["agent_1"], step.obs["agent_1"])
    assert client.state(world).shape == (54,)

    reset = client.reset(world, seed=3)
    np.testing.assert_array_equal(reset.obs["agent_0"], created.obs[world]["agent_0"])
    assert reset.tick == 0 and reset.agents == AGENTS

    assert client.leave(world, ["agent_2"]) == ["agent_2"]
    client.close_world(world)
    assert client.list_worlds() == []


@pytest.mark.parametrize(
    "call, code",
    [
        (lambda c, w: c.create("os:system"), "scenario_not_allowed"),
        (lambda c, w: c.create("no_such_scenario_v0"), "scenario_not_allowed"),
        (lambda c, w: c.create(SPREAD, config={"N": "three"}), "scenario_error"),
        (lambda c, w: c.create(SPREAD, fill="sometimes"), "bad_request"),
        (lambda c, w: c.act(12345, {"agent_0": 0}), "unknown_world"),
        (lambda c, w: c.act(w, {"agent_0": 9}), "bad_action"),
        (lambda c, w: c.act(w, {"agent_0": 1.5}), "bad_action"),
        (lambda c, w: c.act(w, {"nobody": 0}), "unknown_seat"),
        (lambda c, w: c.join(w, tokens={"agent_0": "0" * 32}), "bad_token"),
        (lambda c, w: c.request("teleport"), "unknown_op"),
    ],
)
def test_errors_raise_server_error_with_code(client, call, code):
    world = client.create(SPREAD, join=True).worlds[0]
    with pytest.raises(ServerError) as raised:
        call(client, world)
    assert raised.value.code == code
    assert code in str(raised.value) and raised.value.message in str(raised.value)
    # The refused request changed nothing: the world still steps for its seats.
    assert client.act(world, dict.fromkeys(AGENTS, 0)).tick == 1


def test_errors_between_two_connections(server, client):
    world = client.create(SPREAD, join=False, wait_for_seats=False).worlds[0]
    tokens = client.join(world, seats=["agent_0"]).seats
    with AgentClient(server.address, timeout_s=10.0) as other:
        with pytest.raises(ServerError, match="seat_taken"):
            other.join(world, seats=["agent_0"])
        with pytest.raises(ServerError) as raised:
            other.reset(world)
        assert raised.value.code == "not_owner" and raised.value.hint
        other.join(world, seats=["agent_1"])
        with pytest.raises(ServerError, match="not_your_seat"):
            other.act(world, {"agent_0": 0})
        # Taking a seat over with its token: the previous holder no longer holds it.
        assert other.join(world, tokens=tokens).seats == tokens
    with pytest.raises(ServerError, match="not_your_seat"):
        client.act(world, {"agent_0": 0})


def test_already_acted_and_async_acts_in_several_worlds(client):
    shared = client.create(SPREAD, wait_for_seats=False, deadline_ms=60_000).worlds[0]
    client.join(shared, seats=["agent_0"])
    other = client.create(SPREAD, wait_for_seats=False, deadline_ms=60_000).worlds[0]
    client.join(other, seats=["agent_0"])
    first = client.send_act(shared, {"agent_0": 1})
    second = client.send_act(other, {"agent_0": 2})
    # Free seats are filled, so both worlds step at once; replies come back matched by id in any order.
    assert client.recv(second).world == other
    assert client.recv(first).world == shared
    ids = {client.send_act(w, {"agent_0": 0}) for w in (shared, other)}
    assert {client.recv().world, client.recv().world} == {shared, other}
    assert not ids & set(client._ops)
    with pytest.raises(RuntimeError, match="no act in flight"):
        client.recv()

    held = client.create(SPREAD, join=True, deadline_ms=60_000).worlds[0]
    pending = client.send_act(held, {"agent_0": 0})  # the world waits for agent_1 and agent_2
    with pytest.raises(ServerError, match="already_acted"):
        client.act(held, {"agent_0": 0})
    assert client.act(held, {"agent_1": 0, "agent_2": 0}).tick == 1
    assert client.recv(pending).tick == 1


def test_timeout_names_address_and_op():
    # Nothing listens on this port: the reply never comes and the client must not hang.
    with AgentClient("tcp://127.0.0.1:9", timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"tcp://127\.0\.0\.1:9.*'ping'"):
            client.ping()
        assert time.monotonic() - started < 2.0
    with pytest.raises(RuntimeError, match="closed"):
        client.ping()


def test_two_clients_step_one_world_in_lockstep(server):
    """Each client holds different seats; the world steps only when both acted (no fill, no 'late')."""
    steps = 12
    with AgentClient(server.address, timeout_s=10.0) as owner:
        world = owner.create(SPREAD, config={"max_cycles": 100}, seed=0, deadline_ms=30_000).worlds[0]
        seen: dict[str, list] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(2, timeout=10)

        def play(name: str, seats: list[str], delay_s: float) -> None:
            try:
                with AgentClient(server.address, timeout_s=20.0) as mine:
                    mine.join(world, seats=seats)
                    barrier.wait()
                    ticks = []
                    for t in range(steps):
                        if t % 4 == 0:
                            time.sleep(delay_s)  # one side lags: the other must wait, not be filled
                        result = mine.act(world, {a: (t + i) % 5 for i, a in enumerate(seats)})
                        assert result.filled == {}
                        ticks.append(result.tick)
                    seen[name] = ticks
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=play, args=("a", ["agent_0"], 0.05)),
            threading.Thread(target=play, args=("b", ["agent_1", "agent_2"], 0.0)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        assert seen["a"] == seen["b"] == list(range(1, steps + 1))
        assert owner.list_worlds()[0]["tick"] == steps


def test_a_seat_that_never_acts_is_reported_filled_and_late(server):
    """The step result names the world's seats the fill action stood in for, not only the caller's own."""
    with AgentClient(server.address, timeout_s=10.0) as owner, AgentClient(server.address, timeout_s=10.0) as idle:
        world = owner.create(SPREAD, seed=0, deadline_ms=200, wait_for_seats=False).worlds[0]
        owner.join(world, seats=["agent_0"])
        idle.join(world, seats=["agent_1"])  # holds its seat and never acts
        result = owner.act(world, {"agent_0": 1}, timeout_s=5.0)
        assert result.tick == 1 and result.filled == {"agent_1": "late", "agent_2": "free"}


def test_agents_imports_only_the_protocol():
    """A custom client machine needs pyzmq, msgpack, numpy, gymnasium and pettingzoo: never the server or torch."""
    loaded = modules_loaded_by("agora_marl.agents", "agora_marl.agents.play", "agora_marl.agents.policies")
    ours = {m for m in loaded if m.startswith("agora_marl.")}
    allowed = ("agora_marl.agents", "agora_marl.envserver.protocol")
    assert ours and "torch" not in loaded
    assert not {m for m in ours if not m.startswith(allowed) and m != "agora_marl.envserver"}


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")
def test_curve_server_needs_its_public_key(make_server):
    public, secret = zmq.curve_keypair()
    server = make_server(curve_secret_key=secret)
    with AgentClient(server.address, timeout_s=10.0, server_key=public.decode()) as client:
        world = client.create(SPREAD, join=True).worlds[0]
        assert client.act(world, dict.fromkeys(AGENTS, 1)).tick == 1
    with AgentClient(server.address, timeout_s=0.5) as plain, pytest.raises(TimeoutError):
        plain.ping()
