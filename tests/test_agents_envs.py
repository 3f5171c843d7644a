"""RemoteParallelEnv and SeatEnv over the wire: PettingZoo's and gymnasium's own checkers, and determinism."""

from __future__ import annotations

import copy
import pickle
import time
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from agora_marl.agents import AgentClient, RemoteParallelEnv, SeatEnv, ServerError
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"


@pytest.mark.parametrize(
    "scenario, config",
    [
        (SPREAD, {}),
        ("mpe2.simple_tag_v3:parallel_env", {}),  # two teams with different observation spaces
        ("pettingzoo.butterfly.pistonball_v6:parallel_env", {"n_pistons": 3, "max_cycles": 8}),  # images
        ("predator_prey_v0", {"n_prey": 2, "catch_radius": 0.5, "max_cycles": 20}),  # agents leave mid-episode
    ],
)
def test_parallel_api_test_over_the_wire(server, scenario, config):
    env = RemoteParallelEnv(server.address, scenario, config, seed=0, timeout_s=10.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PettingZoo reports API slips as warnings: make them failures
            parallel_api_test(env, num_cycles=60)
        in_process = make_env(scenario, config)
        for agent in env.possible_agents:
            assert env.observation_space(agent) == in_process.observation_space(agent)
            assert env.action_space(agent) == in_process.action_space(agent)
        assert env.state().shape == env.state_space.shape
    finally:
        env.close()
    env.close()  # idempotent


@pytest.mark.parametrize("continuous", [False, True])
def test_same_seed_same_trajectory_in_process_and_over_the_wire(server, continuous):
    config = {"max_cycles": 10, "continuous_actions": continuous}
    local = make_env(SPREAD, config)
    remote = RemoteParallelEnv(server.address, SPREAD, config, seed=7, timeout_s=10.0)
    rng = np.random.default_rng(0)
    try:
        for episode in range(2):
            seed = 7 if episode == 0 else None  # the second episode continues each world's own generator
            local_obs, _ = local.reset(seed=seed)
            remote_obs, _ = remote.reset(seed=seed)
            for agent in local.agents:
                np.testing.assert_array_equal(local_obs[agent], remote_obs[agent])
            while local.agents:
                actions = {a: _fixed_action(local.action_space(a), rng) for a in local.agents}
                expected = local.step(actions)
                got = remote.step(actions)
                for agent in actions:
                    np.testing.assert_array_equal(expected[0][agent], got[0][agent])
                    assert expected[1][agent] == got[1][agent]
                    assert (expected[2][agent], expected[3][agent]) == (got[2][agent], got[3][agent])
                assert remote.agents == local.agents
    finally:
        remote.close()


def _fixed_action(space, rng):
    if hasattr(space, "n"):
        return int(rng.integers(space.n))
    return rng.uniform(space.low, space.high).astype(space.dtype)


def test_attach_to_an_existing_world(server):
    with AgentClient(server.address, timeout_s=10.0) as owner:
        created = owner.create(SPREAD, config={"max_cycles": 3}, seed=1, wait_for_seats=False, auto_reset=True)
        (world,) = created.worlds
        env = RemoteParallelEnv.attach(server.address, world, timeout_s=10.0)
        try:
            assert env.possible_agents == created.spec.possible_agents
            obs, _ = env.reset()  # not the owner: joins the episode that is running
            assert set(obs) == set(env.agents)
            steps = 0
            while env.agents:
                env.step({a: 0 for a in env.agents})
                steps += 1
            assert steps == 3
            obs, _ = env.reset()  # the world auto-reset: the new episode's first observations
            assert set(obs) == set(env.possible_agents) and owner.list_worlds()[0]["episode"] == 1
            with pytest.raises(ValueError, match="owner"):
                env.reset(seed=3)
        finally:
            env.close()
        assert set(owner.list_worlds()[0]["seats"].values()) == {"free"}  # an attached env leaves, not closes


@pytest.mark.parametrize(
    "scenario, config, seat",
    [
        ("gymnasium:CartPole-v1", {}, None),  # a one-seat world: its agent is "agent_0"
        (SPREAD, {}, "agent_1"),  # one seat of three; the server fills the other two
        (SPREAD, {"continuous_actions": True}, None),
    ],
)
def test_seat_env_passes_check_env(server, scenario, config, seat):
    env = SeatEnv(server.address, scenario=scenario, config=config, seat=seat, seed=0, fill="random", timeout_s=10.0)
    try:
        assert env.seat == (seat or "agent_0")
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_seat_env_in_a_shared_world_waits_for_the_next_episode(server):
    with AgentClient(server.address, timeout_s=10.0) as owner:
        world = owner.create(SPREAD, config={"max_cycles": 4}, seed=2, wait_for_seats=False).worlds[0]
        env = SeatEnv(server.address, world=world, seat="agent_2", timeout_s=10.0)
        try:
            obs, _ = env.reset()
            assert obs in env.observation_space
            lengths = []
            for _ in range(2):
                length, done = 0, False
                while not done:
                    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                    length, done = length + 1, terminated or truncated
                    assert isinstance(reward, float)
                lengths.append(length)
                env.reset()
            assert lengths == [4, 4]
            with pytest.raises(ValueError, match="does not own"):
                env.reset(seed=1)
            # Another connection takes the seat over with its token; the old one must not fight to take it back.
            again = SeatEnv(server.address, world=world, seat="agent_2", token=env.token, timeout_s=10.0)
            assert again.token == env.token
            with pytest.raises(ServerError, match="seat_taken"):
                env.step(env.action_space.sample())
            again.reset()
            again.step(again.action_space.sample())
            again.close()
        finally:
            env.client.close()


def test_seat_env_whose_agent_leaves_early_waits_for_the_next_episode(server):
    """A caught prey's seat is inactive until the world's episode ends; reset() then returns the next one's start."""
    config = {"n_prey": 2, "catch_radius": 0.5, "max_cycles": 20}
    with AgentClient(server.address, timeout_s=10.0) as owner:
        world = owner.create("predator_prey_v0", config, seed=1, fill="random", wait_for_seats=False).worlds[0]
        env = SeatEnv(server.address, world=world, seat="prey_0", timeout_s=10.0)
        env.action_space.seed(0)
        try:
            outcomes = []
            for _ in range(4):
                obs, _ = env.reset()
                assert obs in env.observation_space
                steps, terminated, truncated = 0, False, False
                while not (terminated or truncated):
                    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                    steps += 1
                outcomes.append((steps, terminated, owner.list_worlds()[0]["tick"]))
            # Some episode saw the prey caught while the world played on (its tick past 0, not yet reset).
            assert any(terminated and tick > 0 for _, terminated, tick in outcomes), outcomes
        finally:
            env.close()


def test_the_envs_pickle_by_connecting_again(server):
    """Vectorising wrappers (SuperSuit, SB3) pickle their envs into workers: a copy connects again on its own."""
    env = RemoteParallelEnv(server.address, SPREAD, config={"max_cycles": 5}, seed=7, timeout_s=10.0)
    copy = pickle.loads(pickle.dumps(env))
    try:
        assert copy.world != env.world and copy.possible_agents == env.possible_agents
        for one in (env, copy):
            one.reset(seed=3)
        for _ in range(5):  # a world of its own, the same scenario, config and seed: the same episode
            actions = {a: 1 for a in env.agents}
            (obs_a, rew_a, *_), (obs_b, rew_b, *_) = env.step(actions), copy.step(actions)
            assert rew_a == rew_b and all(np.array_equal(obs_a[a], obs_b[a]) for a in obs_a)
    finally:
        copy.close()
        env.close()
    seat = SeatEnv(server.address, scenario="gymnasium:CartPole-v1", seed=2, timeout_s=10.0)
    seat_copy = pickle.loads(pickle.dumps(seat))
    try:
        assert seat_copy.world != seat.world
        first, _ = seat.reset(seed=5)
        again, _ = seat_copy.reset(seed=5)
        assert np.array_equal(first, again)
    finally:
        seat_copy.close()
        seat.close()
    with AgentClient(server.address, timeout_s=10.0) as owner:
        (world,) = owner.create(SPREAD, wait_for_seats=False).worlds
        attached = RemoteParallelEnv.attach(server.address, world, timeout_s=10.0)
        moved = pickle.loads(pickle.dumps(attached))  # the seats move to the copy, with their tokens
        try:
            assert moved.world == world and moved.tokens == attached.tokens
            moved.reset()
            assert set(moved.step({a: 0 for a in moved.agents})[0]) == set(moved.possible_agents)
        finally:
            moved.close()
            attached.close()


def test_a_quiet_env_keeps_its_world_and_takes_lost_seats_back(make_server):
    """A training framework's update may last longer than the server's heartbeat timeout (RLlib's first: ~14 s)."""
    server = make_server(heartbeat_timeout_s=0.5)
    env = RemoteParallelEnv(server.address, SPREAD, seed=1, timeout_s=10.0, keep_alive_s=5.0)
    try:
        assert env.client.welcome["keep_alive_s"] == 5.0
        env.reset(seed=1)
        time.sleep(1.5)  # three heartbeat timeouts without a word
        obs, *_ = env.step({a: 0 for a in env.agents})
        assert set(obs) == set(env.possible_agents)
    finally:
        env.close()
    with AgentClient(server.address, timeout_s=10.0) as owner:
        owner.hello(keep_alive_s=30.0)
        (world,) = owner.create(SPREAD, wait_for_seats=False).worlds
        attached = RemoteParallelEnv.attach(server.address, world, timeout_s=10.0, keep_alive_s=None)
        try:
            attached.reset()
            deadline = time.monotonic() + 10.0
            while "held" in owner.list_worlds()[0]["seats"].values():  # the server gives the silent env's seats up
                assert time.monotonic() < deadline, "the silent env kept its seats"
                time.sleep(0.1)
            obs, *_ = attached.step({a: 0 for a in attached.agents})  # ... and the env takes them back
            assert set(obs) == set(attached.possible_agents)
            assert set(owner.list_worlds()[0]["seats"].values()) == {"held"}
        finally:
            attached.close()


def test_a_seat_env_keeps_its_world_through_a_long_pause(make_server):
    """SB3 on a SeatEnv pauses for its update between two steps: the env's keep-alive must outlast it."""
    server = make_server(heartbeat_timeout_s=0.5)
    env = SeatEnv(server.address, scenario="gymnasium:CartPole-v1", seed=1, timeout_s=10.0)
    try:
        assert env.client.welcome["keep_alive_s"] == 300.0  # asked for by default
        env.reset(seed=1)
        time.sleep(1.5)  # three heartbeat timeouts without a word
        obs, *_ = env.step(0)
        assert obs in env.observation_space
        env.reset()  # still the owner
    finally:
        env.close()
    short = SeatEnv(server.address, scenario="gymnasium:CartPole-v1", seed=1, timeout_s=10.0, keep_alive_s=0.5)
    try:
        short.reset(seed=1)
        time.sleep(1.5)  # past its keep-alive: the world closes, and the env says why
        with pytest.raises(ServerError, match="unknown_world.*silent for longer than its keep-alive"):
            short.step(0)
    finally:
        with pytest.warns(UserWarning, match="could not release"):  # the world is gone
            short.close()


def test_a_seat_env_takes_a_lost_seat_back(make_server):
    server = make_server(heartbeat_timeout_s=0.5)
    with AgentClient(server.address, timeout_s=10.0) as owner:
        owner.hello(keep_alive_s=30.0)
        (world,) = owner.create(SPREAD, wait_for_seats=False, fill="noop").worlds
        env = SeatEnv(server.address, world=world, seat="agent_1", timeout_s=10.0, keep_alive_s=None)
        try:
            env.reset()
            deadline = time.monotonic() + 10.0
            while owner.list_worlds()[0]["seats"]["agent_1"] == "held":  # the server gives the silent seat up
                assert time.monotonic() < deadline, "the silent env kept its seat"
                time.sleep(0.1)
            obs, *_ = env.step(0)  # ... and the env takes it back with its token
            assert obs in env.observation_space
            assert owner.list_worlds()[0]["seats"]["agent_1"] == "held"
        finally:
            env.close()


def _attached_seat_env(address, world):
    return SeatEnv(address, world=world, seat="agent_1", timeout_s=10.0)


def _attached_parallel_env(address, world):
    return RemoteParallelEnv.attach(address, world, timeout_s=10.0)


def _step(env):
    if isinstance(env, SeatEnv):
        return env.step(0)
    return env.step({a: 0 for a in env.agents})


@pytest.mark.parametrize("attach", [_attached_seat_env, _attached_parallel_env])
def test_a_copy_of_an_attached_env_takes_its_seats_and_the_original_says_so(server, attach):
    """A copy of an env in a shared world takes its seats over with their tokens; the original must say that, also
    once the copy has left the seats (voiding their tokens), instead of a hint to join without a token."""
    with AgentClient(server.address, timeout_s=10.0) as owner:
        (world,) = owner.create(SPREAD, wait_for_seats=False, fill="noop").worlds
        env = attach(server.address, world)
        try:
            env.reset()
            copied = copy.deepcopy(env)
            copied.reset()
            _step(copied)  # the copy holds the seats
            with pytest.raises(ServerError, match="seat_taken.*copy of this env") as taken:
                _step(env)
            assert taken.value.hint == "use the copy"
            copied.close()  # leaving voids the seats' tokens
            with pytest.raises(ServerError, match="bad_token.*copy of this env.*left them since") as left:
                _step(env)
            assert "join without a token" not in left.value.hint and "new env" in left.value.hint
        finally:
            env.client.close()
