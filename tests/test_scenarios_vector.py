"""Vectorised and per-copy forms of a scenario give identical trajectories for the same seeds, across partial resets."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.scenarios import make_env, make_vector, registered

VECTORISED = sorted(name for name, entry in registered().items() if entry.vector_factory is not None)
CONFIGS = {
    "foraging_v0": [{}, {"size": 5, "n_agents": 3, "n_food": 3, "max_cycles": 15}],
    "cover_v0": [{}, {"n_agents": 2}],
}


def test_the_cooperative_and_coordination_worlds_are_vectorised():
    assert {"foraging_v0", "cover_v0"} <= set(VECTORISED)


@pytest.mark.parametrize("name", VECTORISED)
@pytest.mark.parametrize("which", [0, 1])
def test_vector_copies_step_exactly_like_per_copy_worlds(name, which):
    config = CONFIGS.get(name, [{}, {}])[which]
    k, seed, steps = 5, 1234 + which, 150
    vector = make_vector(name, k, config)
    singles = [make_env(name, config) for _ in range(k)]
    agents = vector.possible_agents
    rng = np.random.default_rng(0)
    batch = vector.reset(seed=seed)
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    episodes_ended = 0
    for _ in range(steps):
        for i in range(k):
            for a in agents:
                np.testing.assert_array_equal(batch[a][i], obs[i][a])
            np.testing.assert_array_equal(vector.state()[i], singles[i].state())
        actions = {a: rng.integers(0, vector.action_spaces[a].n, k) for a in agents}
        batch, rewards, terminated, truncated = vector.step(actions)
        assert rewards.shape == terminated.shape == truncated.shape == (k, len(agents))
        assert rewards.dtype == np.float32 and terminated.dtype == truncated.dtype == np.bool_
        ended = []
        for i, env in enumerate(singles):
            obs[i], rew, term, trunc, _ = env.step({a: int(actions[a][i]) for a in agents})
            assert [rew[a] for a in agents] == rewards[i].tolist()
            assert [term[a] for a in agents] == terminated[i].tolist()
            assert [trunc[a] for a in agents] == truncated[i].tolist()
            # In vector form a copy's agents end together; the per-copy form then has no live agent.
            assert (not env.agents) == bool((terminated[i] | truncated[i]).any())
            if not env.agents:
                ended.append(i)
                obs[i] = env.reset()[0]
        if ended:
            episodes_ended += len(ended)
            batch = vector.reset(copies=np.array(ended))
    assert episodes_ended >= k  # partial resets were exercised


@pytest.mark.parametrize("name", VECTORISED)
def test_returned_arrays_are_fresh_and_contiguous(name):
    vector = make_vector(name, 4)
    first = vector.reset(seed=0)
    kept = {a: v.copy() for a, v in first.items()}
    actions = {a: np.ones(4, np.int64) for a in vector.possible_agents}
    for _ in range(3):
        obs, *_ = vector.step(actions)
    for a in vector.possible_agents:
        np.testing.assert_array_equal(first[a], kept[a])  # later steps did not write into earlier results
        assert obs[a].flags.c_contiguous and obs[a].shape == (4, *vector.observation_spaces[a].shape)
        assert all(vector.observation_spaces[a].contains(row) for row in obs[a])
    assert vector.state().shape == (4, *vector.state_space.shape)


@pytest.mark.parametrize("name", VECTORISED)
def test_reseeding_a_vector_replays_and_unseeded_resets_continue(name):
    vector = make_vector(name, 3)
    a = vector.reset(seed=5)
    b = vector.reset()
    c = vector.reset(seed=5)
    d = vector.reset()
    for agent in vector.possible_agents:
        np.testing.assert_array_equal(a[agent], c[agent])
        np.testing.assert_array_equal(b[agent], d[agent])
        assert not np.array_equal(a[agent], b[agent])
