"""BatchedWorlds: shapes, layouts, auto-reset with final observations, several servers, and in-process equality."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agora_marl.agents import AgentClient, BatchedWorlds, BatchResult, ServerError
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"
TAG = "mpe2.simple_tag_v3:parallel_env"


def _noop_actions(batched: BatchedWorlds, value: int = 0):
    k, agents = batched.num_worlds, batched.possible_agents
    if batched.layout == "stacked":
        return np.full((k, len(agents)), value, dtype=np.int64)
    return {a: np.full(k, value, dtype=np.int64) for a in agents}


@pytest.mark.parametrize("layout", ["agents", "stacked"])
def test_shapes_and_auto_reset(server, layout):
    k, n, cycles = 5, 3, 3
    with BatchedWorlds(
        server.address, SPREAD, {"max_cycles": cycles}, num_worlds=k, seed=0, layout=layout, state=True
    ) as batched:
        assert batched.possible_agents == ["agent_0", "agent_1", "agent_2"] and batched.num_worlds == k
        assert batched.state_space.shape == (54,)
        first = batched.reset()
        assert first.rewards is None and first.alive.shape == (k, n) and first.alive.all()
        assert first.state.shape == (k, 54)
        obs = first.obs["agent_1"] if layout == "agents" else first.obs[:, 1]
        assert obs.shape == (k, 18) and obs.dtype == np.float32
        for t in range(1, cycles + 1):
            result = batched.step(_noop_actions(batched, value=t % 5))
            assert result.rewards.shape == (k, n) and result.rewards.dtype == np.float32
            assert result.terminated.shape == result.truncated.shape == (k, n)
            assert result.episode_over.shape == (k,) and result.state.shape == (k, 54)
            if t < cycles:
                assert not result.episode_over.any() and result.final_obs is None
        # max_cycles reached: every world truncated, auto-reset, and handed back its last observation.
        assert result.episode_over.all() and result.truncated.all()
        assert result.final_state.shape == (k, 54)
        final = result.final_obs["agent_0"] if layout == "agents" else result.final_obs[:, 0]
        new = result.obs["agent_0"] if layout == "agents" else result.obs[:, 0]
        assert final.shape == new.shape == (k, 18) and not np.array_equal(final, new)
        assert result.alive.all()
        new[:] = 0  # results are the caller's to keep and modify (no read-only frame views)


def test_worlds_match_the_scenario_stepped_in_process(server):
    k, seed = 3, 11
    config = {"max_cycles": 4}
    rng = np.random.default_rng(1)
    locals_ = [make_env(SPREAD, config) for _ in range(k)]
    with BatchedWorlds(server.address, SPREAD, config, num_worlds=k, seed=seed) as batched:
        result = batched.reset()
        expected = [env.reset(seed=seed + i)[0] for i, env in enumerate(locals_)]
        for step in range(6):  # across an auto-reset
            for i, env in enumerate(locals_):
                for agent in env.possible_agents:
                    np.testing.assert_array_equal(result.obs[agent][i], expected[i][agent])
            actions = {a: rng.integers(5, size=k) for a in batched.possible_agents}
            result = batched.step(actions)
            expected = []
            for i, env in enumerate(locals_):
                obs, rewards, *_ = env.step({a: int(actions[a][i]) for a in env.agents})
                np.testing.assert_allclose(result.rewards[i], [rewards[a] for a in env.possible_agents], rtol=1e-6)
                if not env.agents:
                    for agent in env.possible_agents:
                        np.testing.assert_array_equal(result.final_obs[agent][i], obs[agent])
                    obs, _ = env.reset()
                expected.append(obs)
            assert result.episode_over.tolist() == [step == 3] * k


def test_two_servers_in_world_order(make_server):
    servers = [make_server(), make_server()]
    k = 5
    with BatchedWorlds([s.address for s in servers], SPREAD, {"max_cycles": 2}, num_worlds=k, seed=4) as batched:
        assert [len(s.worlds) for s in servers] == [3, 2]  # contiguous chunks, as even as can be
        result = batched.reset()
        single = BatchedWorlds(servers[0].address, SPREAD, {"max_cycles": 2}, num_worlds=k, seed=4)
        try:
            np.testing.assert_array_equal(single.reset().obs["agent_2"], result.obs["agent_2"])
            actions = {a: np.arange(k) % 5 for a in batched.possible_agents}
            for _ in range(2):
                split, whole = batched.step(actions), single.step(actions)
                for name in ("rewards", "terminated", "truncated", "alive", "episode_over"):
                    np.testing.assert_array_equal(getattr(split, name), getattr(whole, name))
            np.testing.assert_array_equal(split.final_obs["agent_0"], whole.final_obs["agent_0"])
        finally:
            single.close()
    assert all(not s.worlds for s in servers)  # close() closed every world


def _stacked(value):
    return np.stack(list(value.values()), 1) if isinstance(value, dict) else value


@pytest.mark.parametrize("layout", ["agents", "stacked"])
def test_pipelined_parts_step_like_the_whole_batch(make_server, layout):
    """Parts of the batch in flight at once (one across the two servers) give the rows that whole-batch steps give."""
    addresses = [make_server().address, make_server().address]
    k, config, kwargs = 6, {"max_cycles": 3}, dict(num_worlds=6, seed=7, layout=layout, state=True)
    parts = [slice(0, 2), slice(2, 5), slice(5, 6)]  # 2:5 spans the servers' chunks (worlds 0-2 and 3-5)
    rng = np.random.default_rng(0)
    with (
        BatchedWorlds(addresses, SPREAD, config, **kwargs) as piped,
        BatchedWorlds(addresses, SPREAD, config, **kwargs) as whole,
    ):
        piped.reset(), whole.reset()

        def actions_of(actions, rows):
            if layout == "stacked":
                return actions[rows]
            return {a: actions[rows, i] for i, a in enumerate(piped.possible_agents)}

        for t in range(4):  # across the auto-reset after step 3
            actions = rng.integers(0, 5, (k, 3))
            pending = [piped.step_async(actions_of(actions, rows), rows) for rows in parts]
            results = [piped.step_wait(p) for p in reversed(pending)][::-1]  # all in flight, collected in any order
            expected = whole.step(actions_of(actions, slice(0, k)))
            assert expected.episode_over.all() == (t == 2)
            for rows, got in zip(parts, results, strict=True):
                for name in ("rewards", "terminated", "truncated", "alive", "episode_over", "state"):
                    np.testing.assert_array_equal(getattr(got, name), getattr(expected, name)[rows])
                np.testing.assert_array_equal(_stacked(got.obs), _stacked(expected.obs)[rows])
                if t == 2:
                    np.testing.assert_array_equal(_stacked(got.final_obs), _stacked(expected.final_obs)[rows])
                    np.testing.assert_array_equal(got.final_state, expected.final_state[rows])
        with pytest.raises(ValueError, match="rows must be a slice"):
            piped.step_async(actions_of(actions, slice(0, 2)), slice(4, 8))


def test_final_obs_rows_are_zero_where_a_server_had_none(make_server):
    servers = [make_server(), make_server()]
    with BatchedWorlds([s.address for s in servers], "gymnasium:CartPole-v1", num_worlds=2, seed=0) as batched:
        batched.reset()
        # Push the first world over fast and keep the second balanced, so only one server sees an episode end.
        for _ in range(200):
            result = batched.step({"agent_0": np.array([1, 0 if _ % 2 else 1])})
            if result.episode_over.any():
                break
        assert result.episode_over.tolist() == [True, False]
        assert result.final_obs["agent_0"].shape == (2, 4)
        assert not result.final_obs["agent_0"][1].any()


def test_agents_layout_with_two_teams_and_stacked_refused(server):
    with BatchedWorlds(server.address, TAG, num_worlds=2, seed=0) as batched:
        result = batched.reset()
        assert result.obs["adversary_0"].shape == (2, 16) and result.obs["agent_0"].shape == (2, 14)
        assert batched.step(_noop_actions(batched)).rewards.shape == (2, 4)
    with pytest.raises(ValueError, match="stacked"):
        BatchedWorlds(server.address, TAG, num_worlds=2, layout="stacked")
    with AgentClient(server.address) as client:
        assert client.list_worlds() == []  # the refused constructor closed what it created


def test_bad_actions_raise_and_change_nothing(server):
    with BatchedWorlds(server.address, SPREAD, num_worlds=2, seed=0) as batched:
        batched.reset()
        with pytest.raises(ServerError, match="bad_action"):
            batched.step({a: np.array([0, 7]) for a in batched.possible_agents})
        result = batched.step(_noop_actions(batched))
        assert isinstance(result, BatchResult) and result.rewards.shape == (2, 3)
        batched.heartbeat()
        assert batched.heartbeat_timeout_s > 0


def test_a_dead_address_fails_in_seconds_with_what_to_check(tmp_path):
    """The step timeout (60 s by default) is for slow steps; no server at all is told by the first request."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="is the server running and reachable"):
        BatchedWorlds(f"ipc://{tmp_path}/nobody.sock", "mpe2.simple_spread_v3:parallel_env", num_worlds=2)
    assert time.monotonic() - started < 20.0


def test_a_learner_update_longer_than_the_heartbeat_keeps_the_worlds(make_server):
    server = make_server(heartbeat_timeout_s=0.3)
    worlds = BatchedWorlds(server.address, SPREAD, num_worlds=2, seed=0, timeout_s=10.0, keep_alive_s=30.0)
    try:
        worlds.reset()
        time.sleep(1.2)  # four heartbeat timeouts of silence, as in a long update
        assert len(server.worlds) == 2
        step = worlds.step({a: np.zeros(2, np.int64) for a in worlds.possible_agents})
        assert step.rewards.shape == (2, 3)
    finally:
        worlds.close()
