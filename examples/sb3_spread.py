"""Stable-Baselines3 PPO on simple_spread through agora: one policy shared by the three agents (SuperSuit), seeded.

docs/libraries.md walks through it. Start a server, then train, compare with random play and save the model:

    agora serve --bind tcp://127.0.0.1:5555
    python examples/sb3_spread.py tcp://127.0.0.1:5555 --timesteps 400000 --seed 0

``--in-process`` runs the same recipe on worlds built in this process instead, to compare. Two runs with the same
``--seed`` train the same model, through agora or in process. torch runs on one thread (``--threads``): on a machine
that the server shares, torch's default threads make the whole run several times slower (docs/libraries.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import supersuit as ss
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

from agora_marl.agents import RemoteParallelEnv
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"
CONFIG = {"N": 3, "max_cycles": 25}

#: PPO's settings that differ from Stable-Baselines3's defaults (n_steps 2048, batch_size 64, learning_rate 3e-4,
#: gamma 0.99, ent_coef 0), chosen for a few hundred thousand agent-steps (docs/libraries.md has what they reach).
#: With 8 worlds of 3 agents, a rollout is 24 x 100 samples (4 episodes of each world), 4 minibatches.
SETTINGS = {
    "n_steps": 100,
    "batch_size": 600,
    "n_epochs": 10,
    "learning_rate": 1e-3,
    "gamma": 0.95,
    "ent_coef": 0.01,
}


class SeededVecEnv(SB3VecEnvWrapper):
    """SuperSuit's Stable-Baselines3 adapter, made seedable.

    ``PPO(seed=)`` calls the env's ``seed()``, which SuperSuit's adapter passes to a vector env that has none
    (``'ConcatVecEnv' object has no attribute 'seed'``). Here the seed waits for the next reset, as Stable-Baselines3's
    own vector envs do, and SuperSuit then seeds world k with ``seed + k``; later episodes continue each world's own
    generator.
    """

    def __init__(self, venv):
        super().__init__(venv)
        self._seed: int | None = None

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._seed = seed
        return [seed] * self.num_envs

    def reset(self, seed: int | None = None, options: dict | None = None) -> np.ndarray:
        seed, self._seed = (self._seed if seed is None else seed), None
        observations, self.reset_infos = self.venv.reset(seed=seed, options=options)
        return observations


def make_vec_env(address: str | None, worlds: int = 8) -> VecEnv:
    """``worlds`` simple_spread worlds as one Stable-Baselines3 VecEnv with an env per agent (3 x ``worlds``).

    Args:
        address: the agora server's endpoint; None builds the worlds in this process.
        worlds: how many worlds to step side by side.
    """
    # No seed here: SuperSuit makes the worlds by copying this env (each copy creates its own world with the same
    # seed), so PPO(seed=) seeds them at their first reset instead, each its own.
    template = make_env(SPREAD, CONFIG) if address is None else RemoteParallelEnv(address, SPREAD, CONFIG)
    try:
        vec = ss.concat_vec_envs_v1(ss.pettingzoo_env_to_vec_env_v1(template), worlds, num_cpus=0)
    finally:
        template.close()  # the copies are made; this one's world is not used
    return VecMonitor(SeededVecEnv(vec))  # VecMonitor: SB3's logs show each agent's episode return


def train(address: str | None, timesteps: int, seed: int, worlds: int = 8, **settings) -> PPO:
    """Train a shared PPO policy for ``timesteps`` agent-steps (3 per world-step); ``settings`` override SETTINGS."""
    env = make_vec_env(address, worlds)
    try:
        model = PPO("MlpPolicy", env, seed=seed, verbose=0, **{**SETTINGS, **settings})
        model.learn(total_timesteps=timesteps)
    finally:
        env.close()
    return model


def evaluate(model: PPO | None, address: str | None, episodes: int, seed: int) -> np.ndarray:
    """Team returns (the three agents' rewards summed) of ``episodes`` episodes, episode i seeded ``seed + i``:
    the model's greedy actions, or uniformly random ones for None."""
    env = make_env(SPREAD, CONFIG) if address is None else RemoteParallelEnv(address, SPREAD, CONFIG)
    rng = np.random.default_rng(seed)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total = 0.0
            while env.agents:
                if model is None:
                    actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
                else:
                    stacked = np.stack([obs[a] for a in env.agents])
                    chosen = model.predict(stacked, deterministic=True)[0]
                    actions = dict(zip(env.agents, (int(x) for x in chosen), strict=True))
                obs, rewards, *_ = env.step(actions)
                total += sum(rewards.values())
            returns.append(total)
    finally:
        env.close()
    return np.asarray(returns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("address", nargs="?", help="the agora server, e.g. tcp://127.0.0.1:5555")
    where.add_argument("--in-process", action="store_true", help="build the worlds in this process instead")
    parser.add_argument("--timesteps", type=int, default=400_000, help="agent-steps to train (3 per world-step)")
    parser.add_argument("--seed", type=int, default=0, help="seeds PPO and the worlds")
    parser.add_argument("--worlds", type=int, default=8, help="worlds stepped side by side")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to compare the model and random play on")
    parser.add_argument("--save", default="ppo_spread", help="where to save the model (SB3 adds .zip)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: a small MLP trains fastest on one, and the other cores stay free for the "
        "server; 0: torch's default, one per core)",
    )
    args = parser.parse_args()
    address = None if args.in_process else args.address
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = train(address, args.timesteps, args.seed, args.worlds)
    seconds = time.perf_counter() - start
    model.save(args.save)
    print(f"trained {model.num_timesteps} agent-steps in {seconds:.1f} s ({model.num_timesteps / seconds:.0f}/s)")
    for name, policy in (("model", model), ("random", None)) if args.episodes > 0 else ():
        returns = evaluate(policy, address, args.episodes, seed=10_000)
        print(f"{name}: team return {returns.mean():.1f} ± {returns.std():.1f} over {args.episodes} episodes")


if __name__ == "__main__":
    main()
