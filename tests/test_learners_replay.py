"""agora_marl.learners.replay: joint transitions from real batched steps through a server, episode ends at
auto-reset, dead and cut-short seats, partial seats, bulk sampling and exact round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from agora_marl import scenarios
from agora_marl.agents import BatchedWorlds
from agora_marl.learners.replay import JointReplay

AGENTS = ["agent_0", "agent_1", "agent_2"]
pytestmark = pytest.mark.skipif(bool(os.environ.get("AGORA_SERVER")), reason="registers a scenario in this process")


class _Lifecycle(ParallelEnv):
    """Every way a seat's episode can end, on a fixed schedule: agent_1 terminates at t=2, agent_2 is cut short
    (truncated) at t=3 while the world goes on, agent_0 is truncated at t=5, which ends the world's episode.

    An observation is ``[t, agent index, episode seed]``; the state ``[t, 100 + t]``; agent i's reward ``t + i/10``.
    """

    metadata = {"name": "test_lifecycle_v0", "is_parallelizable": True}

    def __init__(self):
        self.possible_agents = list(AGENTS)
        self.state_space = spaces.Box(0, 1000, (2,), np.float32)
        self.t = self.seed_value = 0

    def observation_space(self, agent):
        return spaces.Box(0, 1e6, (3,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(100)

    def _obs(self):
        return {a: np.array([self.t, AGENTS.index(a), self.seed_value], np.float32) for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        self.seed_value = self.seed_value + 1 if seed is None else seed
        return self._obs(), {a: {} for a in self.agents}

    def state(self):
        return np.array([self.t, 100 + self.t], np.float32)

    def step(self, actions):
        self.t += 1
        obs = self._obs()
        rewards = {a: self.t + AGENTS.index(a) / 10 for a in self.agents}
        terminated = {a: a == "agent_1" and self.t == 2 for a in self.agents}
        truncated = {a: (a == "agent_2" and self.t == 3) or (a == "agent_0" and self.t == 5) for a in self.agents}
        self.agents = [a for a in self.agents if not (terminated[a] or truncated[a])]
        return obs, rewards, terminated, truncated, {a: {} for a in obs}


@pytest.fixture(scope="module", autouse=True)
def _lifecycle_registered():
    scenarios.register("test_lifecycle_v0", _Lifecycle, "a test world whose seats end in every way")


def _replay(worlds: BatchedWorlds, capacity: int = 64, state: bool = True) -> JointReplay:
    return JointReplay(
        capacity,
        worlds.possible_agents,
        worlds.observation_spaces,
        worlds.action_spaces,
        worlds.state_space if state else None,
        teams={"low": ["agent_0", "agent_1"], "high": ["agent_2"]},
    )


def _play(worlds: BatchedWorlds, replay: JointReplay, steps: int) -> list[int]:
    """Step with actions ``10 t + i`` (t: the step's number from 1), adding each step; returns rows added per step."""
    before = worlds.reset()
    added = []
    for t in range(1, steps + 1):
        actions = {a: np.full(worlds.num_worlds, 10 * t + i) for i, a in enumerate(worlds.possible_agents)}
        after = worlds.step(actions)
        added.append(replay.add(before, actions, after))
        before = after
    return added


def test_rows_end_episodes_at_auto_reset_and_keep_dead_and_cut_short_seats_apart(server) -> None:
    with BatchedWorlds(server.address, "test_lifecycle_v0", num_worlds=2, seed=7, state=True) as worlds:
        replay = _replay(worlds)
        assert _play(worlds, replay, 6) == [2] * 6
    b = replay.rows(np.arange(0, 12, 2))  # world 0's rows, one per step, in order
    obs = {a: b.obs[a].numpy() for a in AGENTS}
    nxt = {a: b.next_obs[a].numpy() for a in AGENTS}
    assert b.obs["agent_0"][:, 0].tolist() == [0, 1, 2, 3, 4, 0]  # the sixth step starts the next episode
    assert obs["agent_0"][0, 2] == 7 and replay.rows(np.array([1])).obs["agent_0"][0, 2] == 8  # world k: seed + k
    assert b.alive.tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 1]]
    assert b.terminated[:, 1].tolist() == [0, 1, 0, 0, 0, 0] and not b.terminated[:, [0, 2]].any()
    assert b.truncated[:, 2].tolist() == [0, 0, 1, 0, 0, 0] and b.truncated[:, 0].tolist() == [0, 0, 0, 0, 1, 0]
    assert b.episode_over.tolist() == [False, False, False, False, True, False]
    # The episode's end (t=5, truncated): next observation and state are the ended episode's last, not the reset's.
    assert nxt["agent_0"][4].tolist() == [5, 0, 7] and b.next_state[4].tolist() == [5, 105]
    assert b.state[5].tolist() == [0, 100] and nxt["agent_0"][5, 0] == 1
    # agent_2 cut short while the world goes on: no final observation on the wire, it keeps the one it acted on.
    assert nxt["agent_2"][2].tolist() == obs["agent_2"][2].tolist() == [2, 2, 7]
    # Dead seats did not act: their stored action is the space's lowest whatever filled the row.
    assert b.actions["agent_1"].tolist() == [11, 21, 0, 0, 0, 61] and b.actions["agent_2"][3].item() == 0
    assert b.actions["agent_0"].dtype == torch.int64 and b.obs["agent_0"].dtype == torch.float32
    assert b.continues().tolist() == [[1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 1]]
    # Rewards per seat, team rewards summed over the team's seats (a dead seat's reward is 0 on the wire).
    assert np.allclose(b.rewards[0].numpy(), [1.0, 1.1, 1.2])
    assert np.allclose(b.team_rewards["low"].numpy(), [2.1, 4.1, 3.0, 4.0, 5.0, 2.1])
    assert np.allclose(b.team_rewards["high"].numpy(), [1.2, 2.2, 3.2, 0.0, 0.0, 1.2])


def test_the_ring_wraps_and_a_loaded_copy_samples_the_same_rows(server) -> None:
    with BatchedWorlds(server.address, "test_lifecycle_v0", num_worlds=2, seed=1, state=True) as worlds:
        replay = _replay(worlds, capacity=5)
        _play(worlds, replay, 4)  # 8 rows into 5 slots
    assert (len(replay), replay.cursor) == (5, 3)
    # Steps of t = 0, 1, 2, 3 (two worlds each) into slots 0-1, 2-3, 4-0, 1-2: the oldest overwritten first.
    assert replay.rows(np.arange(5)).obs["agent_0"][:, 0].tolist() == [2, 3, 3, 1, 2]
    copy = _replay_like(replay)
    copy.load_state_dict(replay.state_dict())
    assert (copy.cursor, copy.size) == (replay.cursor, replay.size)
    first, second = (r.sample(32, np.random.default_rng(3)) for r in (replay, copy))
    for name in ("rewards", "alive", "terminated", "truncated", "episode_over", "state", "next_state"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    for a in AGENTS:
        assert torch.equal(first.obs[a], second.obs[a]) and torch.equal(first.actions[a], second.actions[a])
        assert torch.equal(first.next_obs[a], second.next_obs[a])
    # A state dict is plain tensors: it survives torch.save / torch.load(weights_only=True).
    assert all(isinstance(v, torch.Tensor) for v in replay.state_dict()["arrays"].values())
    with pytest.raises(ValueError, match="does not fit"):
        JointReplay(6, AGENTS, replay.observation_spaces, replay.action_spaces).load_state_dict(replay.state_dict())
    with pytest.raises(ValueError, match="empty"):
        _replay_like(replay).sample(4, np.random.default_rng(0))


def _replay_like(replay: JointReplay) -> JointReplay:
    return JointReplay(
        replay.capacity, AGENTS, replay.observation_spaces, replay.action_spaces, replay.state_space, replay.teams
    )


def test_stacked_and_per_agent_layouts_store_the_same_rows(server) -> None:
    buffers = []
    for layout in ("agents", "stacked"):
        with BatchedWorlds(
            server.address, "foraging_v0", {"max_cycles": 3}, num_worlds=3, seed=2, layout=layout, state=True
        ) as worlds:
            replay = JointReplay(
                16, worlds.possible_agents, worlds.observation_spaces, worlds.action_spaces, worlds.state_space
            )
            before = worlds.reset()
            for t in range(4):
                chosen = np.array([[t % 6, (t + 2) % 6]] * 3)
                actions = chosen if layout == "stacked" else {"agent_0": chosen[:, 0], "agent_1": chosen[:, 1]}
                after = worlds.step(actions)
                replay.add(before, actions, after)
                before = after
            buffers.append(replay.state_dict())
    agents, stacked = buffers
    assert agents["size"] == 12 and agents["arrays"]["episode_over"].sum() == 3  # max_cycles: all truncated at t=3
    for key, value in agents["arrays"].items():
        assert torch.equal(value, stacked["arrays"][key]), key


def test_a_partial_holder_stores_its_seats_without_state(server) -> None:
    rng = np.random.default_rng(0)
    with (
        BatchedWorlds(
            server.address,
            "foraging_v0",
            {"max_cycles": 2},
            num_worlds=2,
            seed=4,
            seats="agent_0",
            group="replay-partial",
            deadline_ms=20_000,
        ) as owner,
        BatchedWorlds.join_group(server.address, "replay-partial", "agent_1") as other,
    ):
        replay = JointReplay(8, owner.possible_agents, owner.observation_spaces, owner.action_spaces)
        with pytest.raises(ValueError, match="does not hold"):
            JointReplay(
                8,
                owner.possible_agents,
                owner.observation_spaces,
                owner.action_spaces,
                teams={"all": ["agent_0", "agent_1"]},
            )
        before = owner.reset()
        other.reset()
        for _ in range(3):
            pending = other.step_async({"agent_1": rng.integers(0, 6, 2)})
            actions = {"agent_0": rng.integers(0, 6, 2)}
            after = owner.step(actions)
            other.step_wait(pending)
            replay.add(before, actions, after)
            before = after
    b = replay.rows(np.arange(len(replay)))
    assert len(replay) == 6 and b.agents == ["agent_0"] and b.state is None and b.next_state is None
    assert b.episode_over.tolist() == [False, False, True, True, False, False]
    with pytest.raises(ValueError, match="state=True"):
        JointReplay(
            8, owner.possible_agents, owner.observation_spaces, owner.action_spaces, spaces.Box(0, 1, (3,))
        ).add(before, actions, after)


def test_spaces_it_cannot_store_are_refused() -> None:
    box = spaces.Box(-1, 1, (2,), np.float32)
    with pytest.raises(ValueError, match="not a Box"):
        JointReplay(4, ["a"], {"a": spaces.Discrete(3)}, {"a": spaces.Discrete(3)})
    with pytest.raises(ValueError, match="cannot be stored"):
        JointReplay(4, ["a"], {"a": box}, {"a": spaces.Dict({"x": spaces.Discrete(2)})})
    replay = JointReplay(4, ["a"], {"a": box}, {"a": spaces.Box(0.5, 1.0, (2,), np.float32)})
    assert replay.rows(np.array([0])).actions["a"].dtype == torch.float32
