"""The built-in worlds' rules, step by step, from hand-placed positions."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.scenarios.builtin.cover import Cover
from agora_marl.scenarios.builtin.foraging import EAST, LOAD, NORTH, STAY, WEST, Foraging
from agora_marl.scenarios.builtin.predator_prey import parallel_env as predator_prey


def _foraging(agents, levels, food, food_levels, size=6, max_cycles=50) -> Foraging:
    world = Foraging(1, size=size, n_agents=len(agents), n_food=len(food), max_level=3, max_cycles=max_cycles)
    world.reset(seed=0)
    world.agent_pos[0] = agents
    world.agent_level[0] = levels
    world.food_pos[0] = food
    world.food_level[0] = food_levels
    world.food_left[0] = True
    world.total_food[0] = sum(food_levels)
    return world


def _act(world: Foraging, *actions: int):
    return world.step({a: np.array([x]) for a, x in zip(world.possible_agents, actions, strict=True)})


def test_foraging_an_adjacent_agent_with_enough_level_collects_and_the_team_shares_the_reward():
    world = _foraging(agents=[[2, 2], [5, 5]], levels=[2, 1], food=[[2, 3], [4, 1]], food_levels=[2, 3])
    obs, rewards, terminated, truncated = _act(world, LOAD, STAY)
    assert rewards.tolist() == [[pytest.approx(0.4), pytest.approx(0.4)]]  # 2 of the episode's 5 food levels
    assert world.food_left[0].tolist() == [False, True]
    assert not terminated.any() and not truncated.any()
    # A collected food item reads as zeros in every observation (offsets, level, present flag).
    assert obs["agent_1"][0, 6:10].tolist() == [0, 0, 0, 0]


def test_foraging_food_above_one_agents_level_needs_both_loading_together():
    world = _foraging(agents=[[2, 2], [1, 3]], levels=[1, 1], food=[[2, 3], [4, 4]], food_levels=[2, 1])
    _, rewards, _, _ = _act(world, LOAD, STAY)  # level 1 alone, and the other adjacent agent does not load
    assert rewards.sum() == 0 and world.food_left[0, 0]
    _, rewards, _, _ = _act(world, LOAD, LOAD)
    assert rewards[0, 0] == pytest.approx(2 / 3) and not world.food_left[0, 0]


def test_foraging_diagonal_food_is_not_adjacent():
    world = _foraging(agents=[[1, 1], [5, 5]], levels=[3, 1], food=[[2, 2], [4, 1]], food_levels=[1, 1])
    _, rewards, _, _ = _act(world, LOAD, STAY)
    assert rewards.sum() == 0 and world.food_left[0].all()


def test_foraging_moves_are_blocked_by_food_walls_agents_and_shared_targets():
    world = _foraging(agents=[[2, 2], [0, 0]], levels=[1, 1], food=[[2, 3], [4, 4]], food_levels=[1, 1])
    _act(world, EAST, NORTH)  # onto food; off the grid
    assert world.agent_pos[0].tolist() == [[2, 2], [0, 0]]
    world.agent_pos[0] = [[3, 3], [3, 2]]
    _act(world, WEST, STAY)  # onto a standing agent
    assert world.agent_pos[0].tolist() == [[3, 3], [3, 2]]
    world.agent_pos[0] = [[3, 1], [3, 3]]
    _act(world, EAST, WEST)  # both to (3, 2): neither moves
    assert world.agent_pos[0].tolist() == [[3, 1], [3, 3]]
    _act(world, NORTH, STAY)
    assert world.agent_pos[0].tolist() == [[2, 1], [3, 3]]


def test_foraging_ends_when_all_food_is_collected_or_time_runs_out():
    world = _foraging(agents=[[2, 2], [5, 5]], levels=[1, 1], food=[[2, 3]], food_levels=[1], max_cycles=3)
    _, rewards, terminated, truncated = _act(world, LOAD, STAY)
    assert terminated.all() and not truncated.any() and rewards.sum() == pytest.approx(2.0)
    world = _foraging(agents=[[2, 2], [5, 5]], levels=[1, 1], food=[[3, 3]], food_levels=[1], max_cycles=2)
    assert not _act(world, STAY, STAY)[3].any()
    _, _, terminated, truncated = _act(world, STAY, STAY)
    assert truncated.all() and not terminated.any()


def test_foraging_every_start_is_legal():
    world = Foraging(64, size=5, n_agents=3, n_food=4, max_level=2)
    world.reset(seed=3)
    for i in range(64):
        cells = {tuple(p) for p in world.agent_pos[i]} | {tuple(p) for p in world.food_pos[i]}
        assert len(cells) == 7  # nothing shares a cell
        assert ((world.food_pos[i] >= 1) & (world.food_pos[i] <= 3)).all()  # food away from the border
        assert (world.food_level[i] <= world.agent_level[i].sum()).all()  # the whole team can collect any item


def test_predator_prey_a_caught_prey_leaves_and_the_predators_are_paid():
    env = predator_prey(n_predators=2, n_prey=2, max_cycles=50)
    env.reset(seed=0)
    world = env.scenario
    world.predator_pos[:] = [[0.0, 0.0], [0.9, 0.9]]
    world.prey_pos[:] = [[0.05, 0.0], [-0.9, -0.9]]
    obs, rewards, terminated, truncated, _ = env.step(
        {"predator_0": 0, "predator_1": 0, "prey_0": [0, 0], "prey_1": [0, 0]}
    )
    assert terminated == {"predator_0": False, "predator_1": False, "prey_0": True, "prey_1": False}
    assert rewards["prey_0"] == -1.0 and rewards["prey_1"] == pytest.approx(0.01)
    # +1 each for the catch, minus 0.01 x the distance to the one prey still free.
    assert rewards["predator_0"] == pytest.approx(1 - 0.01 * np.hypot(0.9, 0.9))
    assert rewards["predator_1"] == pytest.approx(1 - 0.01 * np.hypot(1.8, 1.8))
    assert env.agents == ["predator_0", "predator_1", "prey_1"]
    # Per prey: offset and free flag; prey_0 reads as gone (zeros), prey_1 as free.
    assert obs["predator_0"][-6:] == pytest.approx([0, 0, 0, -0.9, -0.9, 1])
    world.prey_pos[1] = [0.9, 0.85]
    _, rewards, terminated, _, _ = env.step({"predator_0": 0, "predator_1": 0, "prey_1": [0, 0]})
    assert all(terminated.values()) and env.agents == [] and rewards["predator_0"] == 1.0


def test_predator_prey_speeds_and_walls():
    env = predator_prey(n_predators=1, n_prey=1, prey_speed=0.1, predator_speed=0.08)
    env.reset(seed=0)
    world = env.scenario
    world.predator_pos[:] = [[-0.5, 0.0]]
    world.prey_pos[:] = [[0.5, 0.98]]
    env.step({"predator_0": 4, "prey_0": np.array([1.0, 1.0], np.float32)})
    assert world.predator_pos[0] == pytest.approx([-0.42, 0.0])
    # The velocity is scaled to the top speed, and the wall stops the prey at y = 1.
    assert world.prey_pos[0] == pytest.approx([0.5 + 0.1 / np.sqrt(2), 1.0])


def test_cover_reward_is_minus_the_mean_distance_of_each_landmark_to_its_nearest_agent():
    world = Cover(1, n_agents=2, delay=0, max_cycles=2)
    world.reset(seed=0)
    world.pos[0] = [[0.0, 0.0], [0.5, 0.5]]
    world.landmarks[0] = [[0.1, 0.0], [0.2, 0.0]]
    obs, rewards, terminated, truncated = world.step({"agent_0": np.array([0]), "agent_1": np.array([0])})
    assert rewards[0].tolist() == [pytest.approx(-0.15)] * 2  # both landmarks nearest to agent_0
    assert obs["agent_1"][0, -2:].tolist() == [0.0, 1.0]  # own index one-hot
    assert obs["agent_0"][0, 2:4] == pytest.approx([0.1, 0.0])  # landmark 0's offset
    assert not terminated.any() and not truncated.any()
    world.pos[0] = [[1.0, 1.0], [0.0, 0.0]]
    _, _, _, truncated = world.step({"agent_0": np.array([1]), "agent_1": np.array([3])})
    assert world.pos[0].tolist() == [[1.0, 1.0], [-0.1, 0.0]]  # the wall holds agent_0
    assert truncated.all()


def test_cover_pays_each_steps_score_delay_steps_later_and_keeps_it_in_the_state():
    world = Cover(1, n_agents=1, delay=2, max_cycles=4)
    world.reset(seed=0)
    world.landmarks[0] = [[0.0, 0.0]]
    stay = {"agent_0": np.array([0])}
    paid, pending = [], []
    for x in (0.5, 0.4, 0.3, 0.2):
        world.pos[0] = [[x, 0.0]]
        _, rewards, _, truncated = world.step(stay)
        paid.append(float(rewards[0, 0]))
        pending.append(world.state()[0, -2:].tolist())
    assert paid == pytest.approx([0, 0, -0.5, -0.4])  # steps 1 and 2 are paid at steps 3 and 4
    assert pending[1] == pytest.approx([-0.5, -0.4]) and pending[3] == pytest.approx([-0.3, -0.2])
    assert truncated.all()
    world.reset(copies=np.array([0]))
    assert world.state()[0, -2:].tolist() == [0, 0]  # a new episode owes nothing
