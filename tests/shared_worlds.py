"""The random baseline of a learner's seats in shared worlds, for the tests that show training beats it."""

from __future__ import annotations

import numpy as np

from agora_marl.learners.training import open_worlds, start_opponents, stop_opponents


def random_seat_returns(config, addresses, ticks: int) -> tuple[list[float], list[str], list[str]]:
    """Per finished episode, the return of the config's seats moving at random beside its opponent in the same
    worlds; and those seats and the opponent's."""
    worlds = open_worlds(config, addresses)
    opponents = start_opponents(config, worlds)
    try:
        rng = np.random.default_rng(0)
        running, ended = np.zeros(worlds.num_worlds), []
        worlds.reset()
        for _ in range(ticks):
            result = worlds.step({a: rng.integers(0, 5, worlds.num_worlds) for a in worlds.possible_agents})
            running += result.rewards.sum(1)
            ended += list(running[result.episode_over])
            running[result.episode_over] = 0.0
        return ended, list(worlds.possible_agents), list(worlds.other_agents)
    finally:
        worlds.close()
        stop_opponents(opponents)
