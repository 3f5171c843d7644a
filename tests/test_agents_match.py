"""agents/match.py: sides' policies in the same seeded worlds through a real server; returns and winners."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.agents.match import BY_INFOS, BY_RETURNS, SeatPolicies, Side, play_match
from agora_marl.agents.policies import named_policy, random_policy
from agora_marl.envserver.process import ServerProcesses
from agora_marl.scenarios.registry import make_env


@pytest.fixture(scope="module")
def servers() -> list[str]:
    with ServerProcesses(count=1) as local:
        yield local.addresses


def _side(scenario: str, seats: list[str], policy: str = "random", config: dict | None = None) -> Side:
    env = make_env(scenario, config or {})
    make = {
        "random": lambda a, i: random_policy(env.observation_space(a), env.action_space(a), seed=i),
        "scripted": lambda a, i: named_policy("scripted", env.observation_space(a), env.action_space(a), agent=a),
    }[policy]
    return Side(seats, SeatPolicies({a: make(a, i) for i, a in enumerate(seats)}))


def test_predator_prey_names_its_winners_and_they_agree_with_the_returns(servers):
    """Two prey, so one can be caught while the world goes on: every seat still acts every tick (dead ones ignored)."""
    config = {"n_prey": 2}
    predators, prey = ["predator_0", "predator_1", "predator_2"], ["prey_0", "prey_1"]
    sides = [_side("predator_prey_v0", predators, config=config), _side("predator_prey_v0", prey, config=config)]
    played = play_match(servers, "predator_prey_v0", config, sides, episodes=24, seed=5)
    assert played.returns.shape == (24, 2) and played.decided_by == BY_INFOS
    # The predators win when no prey is left: each caught prey lost 1, so the prey's return is below zero.
    caught_all = played.returns[:, 1] < -1.0
    assert np.array_equal(played.winners == 0, caught_all) and set(played.winners) <= {0, 1}
    assert sum(played.win_rates()) == pytest.approx(1.0)
    fresh = [_side("predator_prey_v0", predators, config=config), _side("predator_prey_v0", prey, config=config)]
    again = play_match(servers, "predator_prey_v0", config, fresh, episodes=24, seed=5)
    assert np.array_equal(again.returns, played.returns)  # the same seeded worlds and seeded policies


def test_mirrored_sides_are_compared_by_return(servers):
    """coin_duel_v0 names no winner: its two seats have the same spaces, so the higher return wins (a vectorised
    scenario, served here as single worlds)."""
    sides = [_side("coin_duel_v0", ["player_0"], "scripted"), _side("coin_duel_v0", ["player_1"])]
    played = play_match(servers, "coin_duel_v0", {}, sides, episodes=16)
    assert played.decided_by == BY_RETURNS
    ahead = np.sign(played.returns[:, 0] - played.returns[:, 1])
    assert np.array_equal(played.winners, np.where(ahead > 0, 0, np.where(ahead < 0, 1, -1)))
    assert played.win_rates()[0] > played.win_rates()[1]  # the scripted player beats random play


def test_sides_must_cover_the_world_once(servers):
    predators = _side("predator_prey_v0", ["predator_0", "predator_1", "predator_2"])
    with pytest.raises(ValueError, match=r"no side plays \['prey_0'\]"):
        play_match(servers, "predator_prey_v0", {}, [predators], episodes=1)
    with pytest.raises(ValueError, match="predator_0 is played by sides 0 and 1"):
        play_match(servers, "predator_prey_v0", {}, [predators, _side("predator_prey_v0", ["predator_0", "prey_0"])], 1)
