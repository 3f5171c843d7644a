"""``act_batch``: a client acts for its seats of K shared worlds in one message while other clients hold the rest."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.agents import AgentClient, ServerError
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"
K = 4


def _shared_worlds(owner: AgentClient, deadline_ms: int = 2000, cycles: int = 25) -> list[int]:
    return owner.create(
        SPREAD, config={"max_cycles": cycles}, seed=10, copies=K, deadline_ms=deadline_ms, wait_for_seats=False
    ).worlds


def test_two_holders_step_k_shared_worlds_exactly_as_in_process(server):
    with (
        AgentClient(server.address, timeout_s=20.0) as owner,
        AgentClient(server.address, timeout_s=20.0) as learner,
        AgentClient(server.address, timeout_s=20.0) as opponent,
    ):
        worlds = _shared_worlds(owner, cycles=3)
        for world in worlds:
            learner.join(world, seats=["agent_0", "agent_1"])
            opponent.join(world, seats=["agent_2"])
        envs = [make_env(SPREAD, {"max_cycles": 3}) for _ in range(K)]
        for i, env in enumerate(envs):
            env.reset(seed=10 + i)
        rng = np.random.default_rng(0)
        for t in range(4):
            moves = rng.integers(0, 5, size=(K, 3))
            pending = opponent.send("act_batch", worlds=worlds, actions={"agent_2": moves[:, 2]})
            mine = learner.act_batch(worlds, {"agent_0": moves[:, 0], "agent_1": moves[:, 1]})
            theirs = opponent.reply(pending)
            assert mine["seats"] == ["agent_0", "agent_1"] and theirs["seats"] == ["agent_2"]
            assert mine["rewards"].shape == (K, 2) and theirs["rewards"].shape == (K, 1)
            assert not mine["late"].any() and not mine["filled"].any()
            for i, env in enumerate(envs):
                obs, rewards, *_ = env.step({f"agent_{j}": int(moves[i, j]) for j in range(3)})
                over = not env.agents
                assert bool(mine["episode_over"][i]) == over
                final = mine["final_obs"] if over else mine["obs"]
                np.testing.assert_array_equal(final["agent_0"][i], obs["agent_0"])
                np.testing.assert_array_equal(theirs["final_obs" if over else "obs"]["agent_2"][i], obs["agent_2"])
                assert mine["rewards"][i, 1] == pytest.approx(rewards["agent_1"])
                if over:
                    obs, _ = env.reset()
                    np.testing.assert_array_equal(mine["obs"]["agent_0"][i], obs["agent_0"])
            assert list(mine["tick"]) == [(t + 1) % 3] * K


def test_a_silent_opponent_costs_each_world_its_deadline_and_is_reported_late(server):
    with (
        AgentClient(server.address, timeout_s=20.0) as owner,
        AgentClient(server.address, timeout_s=20.0) as learner,
        AgentClient(server.address, timeout_s=20.0) as opponent,
    ):
        worlds = _shared_worlds(owner, deadline_ms=100)
        for world in worlds:
            learner.join(world, seats=["agent_0", "agent_1"])
            opponent.join(world, seats=["agent_2"])  # ... and never acts
        reply = learner.act_batch(worlds, {"agent_0": np.zeros(K, np.int64), "agent_1": np.ones(K, np.int64)})
        assert reply["agents"] == ["agent_0", "agent_1", "agent_2"]
        assert reply["late"][:, 2].all() and not reply["late"][:, :2].any() and reply["filled"][:, 2].all()
        assert list(reply["tick"]) == [1] * K
        late = {w["world"]: w["late"] for w in owner.list_worlds()}
        assert all(late[w] == 1 for w in worlds)


def test_a_refused_act_batch_gives_no_world_an_action(server):
    with AgentClient(server.address, timeout_s=20.0) as owner, AgentClient(server.address, timeout_s=20.0) as learner:
        worlds = _shared_worlds(owner, deadline_ms=100)
        for world in worlds[:-1]:
            learner.join(world, seats=["agent_0"])
        learner.join(worlds[-1], seats=["agent_1"])
        zeros = np.zeros(K, np.int64)
        with pytest.raises(ServerError, match="batch_mismatch"):
            learner.act_batch(worlds, {"agent_0": zeros})
        with pytest.raises(ServerError, match="bad_action"):
            learner.act_batch(worlds[:-1], {"agent_0": np.full(K - 1, 9)})
        with pytest.raises(ServerError, match="bad_action"):
            learner.act_batch(worlds[:-1], {"agent_0": np.zeros(K, np.int64)})  # K rows for K - 1 worlds
        with pytest.raises(ServerError, match="not_your_seat"):
            owner.act_batch(worlds, {"agent_0": zeros})
        assert all(w["tick"] == 0 for w in owner.list_worlds()), "no world moved"
        reply = learner.act_batch(worlds[:-1], {"agent_0": np.zeros(K - 1, np.int64)})  # the others are free: filled
        assert reply["filled"][:, 1:].all() and not reply["late"].any()


def test_an_interrupted_world_fails_the_batch_once(server):
    with (
        AgentClient(server.address, timeout_s=20.0) as owner,
        AgentClient(server.address, timeout_s=20.0) as learner,
        AgentClient(server.address, timeout_s=20.0) as other,
    ):
        worlds = _shared_worlds(owner, deadline_ms=60_000)
        for world in worlds:
            learner.join(world, seats=["agent_0"])
            other.join(world, seats=["agent_1"])
        request = learner.send("act_batch", worlds=worlds, actions={"agent_0": np.zeros(K, np.int64)})
        learner.ping()  # answered after the act_batch (one connection is served in order): it waits now
        owner.close_world(worlds[1])
        with pytest.raises(ServerError, match="interrupted"):
            learner.reply(request)
        assert learner.ping()  # nothing else came for that request
        learner._receive_available()
        assert not learner._stash


def test_a_departing_agent_reads_the_same_in_act_batch_as_in_step_batch(server):
    """At the step where an agent leaves (a caught prey), both batch replies give its last observation and say it is
    no longer alive; later rows are zeros. act_batch said it was still alive."""
    config = {"n_predators": 3, "n_prey": 2, "catch_radius": 0.4}
    agents = [f"predator_{i}" for i in range(3)] + ["prey_0", "prey_1"]
    rng = np.random.default_rng(0)
    with AgentClient(server.address, timeout_s=20.0) as client:
        batch = client.create("predator_prey_v0", config=config, seed=1, join=True).worlds
        acting = client.create("predator_prey_v0", config=config, seed=1, join=True).worlds
        departed = 0
        for _ in range(200):
            actions = {
                a: rng.integers(0, 5, (1,))
                if a.startswith("predator")
                else rng.uniform(-1, 1, (1, 2)).astype(np.float32)
                for a in agents
            }
            stepped = client.step_batch(batch, actions)
            acted = client.act_batch(acting, actions)
            left = stepped["terminated"][0, 3:] & ~stepped["episode_over"][0]
            for agent in agents:
                np.testing.assert_array_equal(stepped["obs"][agent][0], acted["obs"][agent][0])
            np.testing.assert_array_equal(stepped["alive"], acted["alive"])
            departed += int(left.sum())
            if departed and not left.any():
                break
        assert departed, "no prey left mid-episode in 200 steps"
