"""coin_duel_v0, the symmetric world for self-play: its rules step by step, its fair starts, and its scripted player."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.spaces import Box, Discrete
from pettingzoo.test import parallel_api_test

from agora_marl.agents.policies import has_scripted_policy, named_policy
from agora_marl.scenarios.builtin.coin_duel import DOWN, LEFT, RIGHT, STAY, UP, CoinDuel, parallel_env, scripted_moves


def _duel(players, coins, size=5, max_cycles=20) -> CoinDuel:
    world = CoinDuel(1, size=size, max_cycles=max_cycles)
    world.reset(seed=0)
    world.pos[0] = players
    world.coins[0] = coins
    return world


def _act(world: CoinDuel, a0: int, a1: int):
    return world.step({"player_0": np.array([a0]), "player_1": np.array([a1])})


def test_a_player_stepping_onto_a_coin_scores_it_and_the_rewards_are_zero_sum():
    world = _duel(players=[[1, 1], [3, 3]], coins=[[1, 2], [4, 4], [0, 0]])
    obs, rewards, terminated, truncated = _act(world, RIGHT, STAY)
    assert rewards.tolist() == [[1.0, -1.0]] and world.present[0].tolist() == [False, True, True]
    assert not terminated.any() and not truncated.any()
    # Coins nearest first, a taken coin last and as zeros; the score difference is each player's own.
    assert obs["player_0"][0, 4:13] == pytest.approx([-0.25, -0.5, 1, 0.75, 0.5, 1, 0, 0, 0])
    assert obs["player_1"][0, 4:7] == pytest.approx([0.25, 0.25, 1])
    assert obs["player_0"][0, -2] == pytest.approx(1 / 3) and obs["player_1"][0, -2] == pytest.approx(-1 / 3)


def test_a_coin_reached_by_both_at_once_is_lost_to_both():
    world = _duel(players=[[2, 1], [2, 3]], coins=[[2, 2], [4, 4], [0, 0]])
    _, rewards, _, _ = _act(world, RIGHT, LEFT)
    assert rewards.tolist() == [[0.0, 0.0]] and not world.present[0, 0] and world.score[0].tolist() == [0, 0]


def test_walls_hold_and_the_episode_ends_when_the_coins_are_gone_or_time_runs_out():
    world = _duel(players=[[0, 0], [4, 4]], coins=[[0, 1], [4, 3], [2, 2]])
    _act(world, UP, DOWN)
    assert world.pos[0].tolist() == [[0, 0], [4, 4]]
    _act(world, RIGHT, LEFT)  # one coin each
    world.pos[0] = [[2, 1], [4, 4]]
    _, rewards, terminated, truncated = _act(world, RIGHT, STAY)
    assert rewards.tolist() == [[1.0, -1.0]] and terminated.all() and not truncated.any()
    world = _duel(players=[[0, 0], [4, 4]], coins=[[2, 2], [1, 3], [3, 1]], max_cycles=2)
    assert not _act(world, STAY, STAY)[3].any()
    _, _, terminated, truncated = _act(world, STAY, STAY)
    assert truncated.all() and not terminated.any()


def test_starts_mirror_each_other_and_coins_lie_on_free_distinct_cells():
    for size in (4, 5):
        world = CoinDuel(200, size=size)
        obs = world.reset(seed=3)
        assert (world.pos[:, 1] == size - 1 - world.pos[:, 0]).all()
        assert not (world.pos[:, 0] == world.pos[:, 1]).all(-1).any()  # never both on the centre
        for i in range(200):
            cells = {tuple(p) for p in world.pos[i]} | {tuple(c) for c in world.coins[i]}
            assert len(cells) == 5
        # Each player sees itself first: player_1's view of player_0 is player_0's view of it, negated.
        np.testing.assert_allclose(obs["player_1"][:, 2:4], -obs["player_0"][:, 2:4])


def test_the_per_copy_form_passes_pettingzoo_parallel_api_test():
    parallel_api_test(parallel_env(), num_cycles=200)


def test_the_scripted_player_walks_to_the_nearest_coin():
    world = _duel(players=[[0, 0], [4, 4]], coins=[[3, 0], [0, 2], [4, 3]])
    obs = world._observe()
    assert scripted_moves(obs["player_0"]).tolist() == [RIGHT]  # (0, 2) is 2 away, (3, 0) is 3
    assert scripted_moves(obs["player_1"]).tolist() == [LEFT]
    world.present[0] = False
    assert scripted_moves(world._observe()["player_0"]).tolist() == [STAY]


def test_scripted_is_the_named_policy_for_a_duel_seat_and_beats_random_play():
    env = parallel_env()
    space, moves = env.observation_space("player_1"), env.action_space("player_1")
    scripted = named_policy("scripted", space, moves)
    assert has_scripted_policy("coin_duel_v0")
    with pytest.raises(ValueError, match="simple_spread"):  # other spaces: still simple_spread's player
        named_policy("scripted", Box(-1.0, 1.0, (14,), np.float32), Discrete(5))
    rng, outcomes = np.random.default_rng(0), []
    for episode in range(200):
        obs, _ = env.reset(seed=episode)
        total = 0.0
        while env.agents:
            obs, rewards, _, _, _ = env.step({"player_0": int(rng.integers(5)), "player_1": scripted(obs["player_1"])})
            total += rewards["player_0"]
        outcomes.append(np.sign(total))
    assert np.mean(np.array(outcomes) > 0) < 0.1  # measured: random play wins 1.5% of 4000 games
    assert np.mean(np.array(outcomes) < 0) > 0.85
