"""homing_v0: the pooled reward, blind observations, walls and time limit, the scripted walk, and the checks."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.agents.policies import has_scripted_policy, named_policy
from agora_marl.scenarios.builtin.homing import DOWN, LEFT, RIGHT, STAY, UP, Homing, scripted_moves
from agora_marl.scenarios.check import CheckSettings, check_scenario


def _world(pos, beacons, max_cycles=3) -> Homing:
    world = Homing(1, n_agents=len(pos), max_cycles=max_cycles)
    world.reset(seed=0)
    world.pos[0], world.beacons[0] = pos, beacons
    return world


def _step(world: Homing, *moves: int):
    return world.step({a: np.array([m]) for a, m in zip(world.possible_agents, moves, strict=True)})


def test_every_agent_is_paid_the_pooled_reward_and_sees_only_itself_and_its_beacon():
    world = _world(pos=[[0.0, 0.0], [0.5, 0.5]], beacons=[[0.3, 0.0], [0.5, 0.1]])
    obs, rewards, terminated, truncated = _step(world, RIGHT, DOWN)
    # agent_0 is 0.2 from its beacon, agent_1 0.3: each is paid minus the mean, 0.25, whoever moved well.
    assert rewards.tolist() == [[pytest.approx(-0.25)] * 2] and not terminated.any() and not truncated.any()
    assert obs["agent_0"][0] == pytest.approx([0.1, 0.0, 0.2, 0.0])  # own position, own beacon's offset
    before = obs["agent_0"].copy()
    obs, _, _, _ = _step(world, STAY, UP)  # the other agent's move changes the pay, never agent_0's view
    assert np.array_equal(obs["agent_0"], before)
    assert world.state()[0].tolist() == pytest.approx([0.1, 0.0, 0.5, 0.5, 0.3, 0.0, 0.5, 0.1, 2 / 3])


def test_walls_hold_agents_and_episodes_are_truncated_at_max_cycles():
    world = _world(pos=[[1.0, -1.0]], beacons=[[0.0, 0.0]], max_cycles=2)
    _, _, _, truncated = _step(world, RIGHT)
    assert world.pos[0].tolist() == [[1.0, -1.0]] and not truncated.any()
    _, _, terminated, truncated = _step(world, LEFT)
    assert world.pos[0, 0] == pytest.approx([0.9, -1.0]) and truncated.all() and not terminated.any()


def test_the_scripted_walk_goes_home_and_is_the_scripted_baseline():
    world = _world(pos=[[-0.5, 0.0]], beacons=[[0.0, 0.2]], max_cycles=20)
    obs = world._observe()
    for _ in range(10):
        obs, _, _, _ = world.step({"agent_0": scripted_moves(obs["agent_0"])})
    assert np.abs(world.pos[0, 0] - world.beacons[0, 0]).max() <= 0.05 + 1e-9
    assert scripted_moves(np.array([[0.0, 0.0, 0.01, -0.02]])).tolist() == [STAY]
    assert has_scripted_policy("homing_v0")
    spaces = Homing(1).observation_spaces["agent_0"], Homing(1).action_spaces["agent_0"]
    assert named_policy("scripted", *spaces)(np.array([0, 0, 0.0, -0.5], np.float32)) == DOWN
    # Over many episodes the walk is far above random play (the docstring's reference returns).
    world, k = Homing(256), 256
    obs, rng, walk, random = world.reset(seed=1), np.random.default_rng(0), 0.0, 0.0
    for _ in range(25):
        obs, rewards, _, _ = world.step({a: scripted_moves(obs[a]) for a in world.possible_agents})
        walk += rewards.sum() / k
    world.reset(seed=1)
    for _ in range(25):
        _, rewards, _, _ = world.step({a: rng.integers(0, 5, k) for a in world.possible_agents})
        random += rewards.sum() / k
    assert -32 < walk < -24 and -102 < random < -90


def test_homing_passes_the_scenario_checks():
    report = check_scenario("homing_v0", CheckSettings(api_cycles=20, steps=30))
    assert report.ok and report.built, report.table()
