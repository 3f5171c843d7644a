"""docs/libraries.md's PettingZoo + SuperSuit + Stable-Baselines3 recipe, run against a real agora server."""

from __future__ import annotations

import stable_baselines3 as sb3  # the test extra installs both (pyproject.toml)
import supersuit as ss

from agora_marl.agents import RemoteParallelEnv

SPREAD = "mpe2.simple_spread_v3:parallel_env"


def test_stable_baselines3_ppo_trains_through_the_server(make_server):
    server = make_server()
    # No seed: the copies below are made by pickling `env`, and a copy creates its world with the same seed.
    env = RemoteParallelEnv(server.address, SPREAD, {"N": 3, "max_cycles": 25})
    # One SB3 environment per agent (parameter sharing); two copies of the world, made by pickling `env`: each copy
    # connects again and creates a world of its own.
    vec = ss.pettingzoo_env_to_vec_env_v1(env)
    vec = ss.concat_vec_envs_v1(vec, 2, num_cpus=0, base_class="stable_baselines3")
    before = server.stats["steps"]
    try:
        model = sb3.PPO("MlpPolicy", vec, n_steps=64, batch_size=128, n_epochs=2, verbose=0)
        model.learn(total_timesteps=2000)
    finally:
        vec.close()
        env.close()
    assert vec.num_envs == 6  # 2 worlds x 3 agents
    assert model.num_timesteps >= 2000
    # Every sample SB3 saw is one agent's share of a world-step the server made: 3 per step of one world.
    assert server.stats["steps"] - before == model.num_timesteps // 3
