"""The authoring API's adapters: PettingZoo bookkeeping done once, for Scenario and for VectorScenario."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.spaces import Box, Discrete

from agora_marl.scenarios.api import Scenario, ScenarioEnv, scenario_env
from agora_marl.scenarios.vector import VectorParallelEnv, VectorScenario


class Countdown(Scenario):
    """Agent ``i`` is terminated once the world's counter reaches ``i + 1``; observations are the counter."""

    name = "countdown_v0"
    max_cycles = 10

    def __init__(self, n_agents: int = 3):
        self.possible_agents = [f"a{i}" for i in range(n_agents)]
        self.seen_actions: list[dict] = []

    def observation_space(self, agent):
        return Box(0.0, 100.0, (1,), np.float32)

    def action_space(self, agent):
        return Discrete(2)

    def reset(self):
        self.counter = 0
        self.noise = float(self.rng.random())

    def step(self, actions):
        self.seen_actions.append(dict(actions))
        self.counter += 1

    def observe(self, agent):
        return np.array([self.counter], np.float32)

    def reward(self, agent):
        return float(self.counter)

    def terminated(self, agent):
        return self.counter >= int(agent[1:]) + 1


def test_agents_leave_as_they_terminate_and_get_no_more_actions():
    env = ScenarioEnv(Countdown(3))
    env.reset(seed=0)
    assert env.agents == ["a0", "a1", "a2"]
    _, rewards, terminated, truncated, _ = env.step({a: 0 for a in env.agents})
    assert terminated == {"a0": True, "a1": False, "a2": False} and not any(truncated.values())
    assert rewards == {"a0": 1.0, "a1": 1.0, "a2": 1.0}
    assert env.agents == ["a1", "a2"]
    obs, *_ = env.step({"a1": 1, "a2": 0})
    assert set(obs) == {"a1", "a2"} and env.scenario.seen_actions[-1] == {"a1": 1, "a2": 0}
    env.step({"a2": 0})
    assert env.agents == []


def test_truncation_at_max_cycles_and_its_override():
    env = scenario_env(Countdown)(max_cycles=2, n_agents=5)
    env.reset(seed=0)
    env.step({a: 0 for a in env.agents})
    _, _, terminated, truncated, _ = env.step({a: 0 for a in env.agents})
    # a1 terminates at counter 2, the same step the others run out of time: terminated wins, the rest truncate.
    assert terminated["a1"] and not truncated["a1"]
    assert all(truncated[a] for a in ("a2", "a3", "a4")) and env.agents == []
    env.max_cycles = 4  # as PettingZoo's parallel_api_test does: the scenario sees it too
    assert env.scenario.max_cycles == 4


def test_seeding_replays_and_unseeded_resets_continue_the_generator():
    env = ScenarioEnv(Countdown())
    env.reset(seed=7)
    first = env.scenario.noise
    env.reset()
    second = env.scenario.noise
    env.reset(seed=7)
    assert env.scenario.noise == first
    env.reset()
    assert env.scenario.noise == second != first


def test_missing_action_is_an_error_naming_the_agent():
    env = ScenarioEnv(Countdown())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="a2"):
        env.step({"a0": 0, "a1": 0})


def test_spaces_cached_metadata_and_optional_parts():
    env = ScenarioEnv(Countdown())
    assert env.observation_space("a0") is env.observation_space("a0")
    assert env.metadata["name"] == "countdown_v0" and env.metadata["is_parallelizable"]
    assert env.metadata["render_modes"] == []  # Countdown does not render
    assert not hasattr(env, "state_space")  # nor define a state
    assert env.noop_action("a0") is None
    with pytest.raises(ValueError, match="render_mode"):
        ScenarioEnv(Countdown(), render_mode="rgb_array")


def test_bad_agent_lists_and_max_cycles_are_refused():
    scenario = Countdown()
    scenario.possible_agents = ["x", "x"]
    with pytest.raises(ValueError, match="unique"):
        ScenarioEnv(scenario)
    with pytest.raises(ValueError, match="max_cycles"):
        ScenarioEnv(Countdown(), max_cycles=0)


class Coin(VectorScenario):
    """K copies of a one-agent world whose observation is a seeded coin; the episode ends after 3 steps."""

    name = "coin_v0"

    def __init__(self, num_copies: int):
        super().__init__(num_copies)
        self.possible_agents = ["solo"]
        self.observation_spaces = {"solo": Box(0.0, 1.0, (1,), np.float32)}
        self.action_spaces = {"solo": Discrete(2)}
        self.coin = np.zeros(num_copies, np.float32)
        self.t = np.zeros(num_copies, np.int64)

    def reset(self, seed=None, copies=None):
        for i in self.seed_copies(seed, copies).tolist():
            self.coin[i] = self.rngs[i].random()
            self.t[i] = 0
        return {"solo": self.coin[:, None].copy()}

    def step(self, actions):
        self.t += 1
        rewards = np.asarray(actions["solo"], np.float32).reshape(-1, 1)
        done = (self.t >= 3)[:, None]
        return {"solo": self.coin[:, None].copy()}, rewards, np.zeros_like(done), done


def test_vector_copies_are_seeded_seed_plus_index_and_reset_alone():
    vector = Coin(3)
    obs = vector.reset(seed=10)["solo"][:, 0]
    singles = [VectorParallelEnv(Coin(1)).reset(seed=10 + i)[0]["solo"][0] for i in range(3)]
    assert obs.tolist() == singles
    again = vector.reset(copies=np.array([1]))["solo"][:, 0]
    assert again[0] == obs[0] and again[2] == obs[2] and again[1] != obs[1]
    with pytest.raises(IndexError):
        vector.reset(copies=np.array([3]))


def test_vector_parallel_env_ends_the_episode_for_every_agent():
    env = VectorParallelEnv(Coin(1))
    env.reset(seed=0)
    for _ in range(2):
        _, rewards, _, truncated, _ = env.step({"solo": 1})
        assert rewards == {"solo": 1.0} and truncated == {"solo": False}
    env.step({"solo": 0})
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"solo": 0})
    with pytest.raises(ValueError, match="one copy"):
        VectorParallelEnv(Coin(2))
