"""BatchedWorlds holding some seats (``seats=``) and agents/opponents.py holding the others of the same K worlds."""

from __future__ import annotations

import multiprocessing
import os
import signal

import numpy as np
import pytest

from agora_marl.agents import BatchedWorlds
from agora_marl.agents.batched import resolve_seats
from agora_marl.agents.opponents import play_seats

PREDATOR_PREY = "predator_prey_v0"
K = 4


def _opponent(address: str, worlds: list[int], seats, policy: str, steps: int, results) -> None:
    played = play_seats(address, worlds, seats, policy, steps=steps, timeout_s=30.0)
    results.put((played.steps, played.reason, played.episodes))


def _start_opponent(address, worlds, seats="prey_*", policy="random", steps=1000):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_opponent, args=(address, worlds, seats, policy, steps, results), daemon=True)
    process.start()
    return process, results


def _random_predators(batched: BatchedWorlds, rng: np.random.Generator):
    return {a: rng.integers(0, 5, size=batched.num_worlds) for a in batched.possible_agents}


def test_seats_resolve_from_a_glob_or_a_list():
    agents = ["predator_0", "predator_1", "prey_0"]
    assert resolve_seats(agents, "predator_*") == ["predator_0", "predator_1"]
    assert resolve_seats(agents, ["prey_0", "predator_0"]) == ["predator_0", "prey_0"]
    with pytest.raises(ValueError, match="its agents are"):
        resolve_seats(agents, "wolf_*")
    with pytest.raises(ValueError, match="its agents are"):
        resolve_seats(agents, ["wolf_0"])


def test_learner_predators_and_an_opponent_process_step_the_same_k_worlds(server):
    config = {"n_predators": 2, "max_cycles": 5}
    with BatchedWorlds(
        server.address, PREDATOR_PREY, config, num_worlds=K, seed=3, seats="predator_*", deadline_ms=20_000
    ) as batched:
        assert batched.partial and batched.state_space is None
        assert batched.possible_agents == ["predator_0", "predator_1"] and batched.other_agents == ["prey_0"]
        assert set(batched.observation_spaces) == set(batched.action_spaces) == {"predator_0", "predator_1"}
        [(address, worlds)] = batched.placement
        assert worlds == batched.worlds and len(worlds) == K
        first = batched.reset()
        assert first.alive.all() and first.obs["predator_0"].shape == (K, 2 + 2 + 3)
        process, results = _start_opponent(address, worlds, steps=12)
        try:
            rng = np.random.default_rng(0)
            episodes = 0
            for _ in range(12):
                result = batched.step(_random_predators(batched, rng))
                assert result.rewards.shape == result.alive.shape == (K, 2)
                assert result.obs["predator_1"].shape == (K, 7) and result.episode_over.shape == (K,)
                assert result.opponent_late == 0.0 and result.own_late == 0.0  # the opponent acted every tick
                episodes += int(result.episode_over.sum())
            steps, reason, opponent_episodes = results.get(timeout=60)
        finally:
            process.join(timeout=30)
        assert (steps, reason) == (12, "steps")
        assert episodes == opponent_episodes >= K * 2  # 5-step episodes (fewer when a prey is caught) over 12 ticks


def test_the_stacked_layout_carries_the_seats_as_an_agent_axis(server):
    with BatchedWorlds(
        server.address,
        PREDATOR_PREY,
        {"max_cycles": 4},
        num_worlds=2,
        layout="stacked",
        seats=["predator_0", "predator_2"],
        deadline_ms=20_000,
    ) as batched:
        [(address, worlds)] = batched.placement
        process, results = _start_opponent(address, worlds, seats=["predator_1", "prey_0"], policy="noop", steps=3)
        try:
            assert batched.reset().obs.shape == (2, 2, 2 + 4 + 3)
            for _ in range(3):
                result = batched.step(np.zeros((2, 2), np.int64))
                assert result.obs.shape == (2, 2, 9) and result.opponent_late == 0.0
            assert results.get(timeout=60)[:2] == (3, "steps")
        finally:
            process.join(timeout=30)


def test_a_dead_opponent_costs_each_step_its_deadline_and_shows_as_late(server):
    with BatchedWorlds(
        server.address, PREDATOR_PREY, {"max_cycles": 50}, num_worlds=K, seed=0, seats="predator_*", deadline_ms=150
    ) as batched:
        [(address, worlds)] = batched.placement
        process, results = _start_opponent(address, worlds, steps=10_000)
        try:
            rng = np.random.default_rng(1)
            result = batched.step(_random_predators(batched, rng))
            assert result.opponent_late == 0.0
            os.kill(process.pid, signal.SIGKILL)  # dead, but its session holds the prey until the heartbeat timeout
            process.join(timeout=30)
            # Its last act_batch may still count for the next tick; from then on every prey seat is filled late.
            lates = [batched.step(_random_predators(batched, rng)).opponent_late for _ in range(3)]
        finally:
            if process.is_alive():
                process.kill()
        assert lates[-2:] == [1.0, 1.0]
        assert all(late in (0.0, 1.0) for late in lates)


def _group_opponent(address: str, group: str, token: str, steps: int, results) -> None:
    played = play_seats(address, [], "prey_*", "random", steps=steps, timeout_s=30.0, group=group, invite_token=token)
    results.put((played.steps, played.reason, played.episodes, played.worlds))


def test_a_named_group_is_found_by_name_and_stepped_by_two_batched_clients(server):
    """The owner names its worlds; a second client holds the other seats of all of them by that name alone."""
    rng = np.random.default_rng(0)
    with BatchedWorlds(
        server.address, PREDATOR_PREY, num_worlds=K, seed=5, seats="predator_*", group="hunt", invite_only=True
    ) as owner:
        assert owner.group == "hunt" and owner.invite_tokens[server.address]
        with pytest.raises(Exception, match="not_allowed"):  # invitation-only: the name alone is not enough
            BatchedWorlds.join_group(server.address, "hunt", "prey_*", timeout_s=10.0)
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        token = owner.invite_tokens[server.address]
        opponent = context.Process(target=_group_opponent, args=(server.address, "hunt", token, 60, results))
        opponent.start()
        try:
            owner.reset()
            for _ in range(60):
                result = owner.step(_random_predators(owner, rng))
                assert result.own_late == 0.0
            steps, reason, episodes, worlds = results.get(timeout=60)
            assert (steps, reason, worlds) == (60, "steps", owner.worlds) and episodes > 0
        finally:
            opponent.join(timeout=30)
        # A BatchedWorlds joiner: the other seats, in the owner's row order; closing it leaves them, the worlds stay.
        joiner = BatchedWorlds.join_group(server.address, "hunt", "prey_*", invite_token=token, timeout_s=10.0)
        with joiner:
            assert joiner.worlds == owner.worlds and joiner.num_worlds == K and not joiner.owns
            assert joiner.possible_agents == owner.other_agents and joiner.other_agents == owner.possible_agents
            first = joiner.reset()
            assert first.alive.all()
            for _ in range(3):
                act = {a: np.stack([s.sample() for _ in range(K)]) for a, s in joiner.action_spaces.items()}
                pending = joiner._chunks[0].client.send("act_batch", worlds=joiner.worlds, actions=act)
                owner.step(_random_predators(owner, rng))
                joiner._chunks[0].client.reply(pending)
        listed = {w["world"]: w for w in owner._chunks[0].client.list_worlds()}
        assert all(listed[w]["seats"]["prey_0"] == "free" for w in owner.worlds)
