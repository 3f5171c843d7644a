"""Adapters that make other kinds of environment look like a PettingZoo ParallelEnv."""

from __future__ import annotations

import gymnasium
from pettingzoo import ParallelEnv


class GymnasiumParallelEnv(ParallelEnv):
    """A single-agent gymnasium env as a one-seat ParallelEnv whose only agent is ``"agent_0"``."""

    metadata = {"name": "gymnasium", "is_parallelizable": True}
    AGENT = "agent_0"

    def __init__(self, env: gymnasium.Env):
        self.env = env
        self.possible_agents = [self.AGENT]
        self.agents: list[str] = []
        self.render_mode = env.render_mode
        self.metadata = {**self.metadata, "name": env.spec.id if env.spec else type(env).__name__}

    def observation_space(self, agent):
        return self.env.observation_space

    def action_space(self, agent):
        return self.env.action_space

    def reset(self, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.env.action_space.seed(seed)
        self.agents = [self.AGENT]
        return {self.AGENT: obs}, {self.AGENT: info}

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions[self.AGENT])
        if terminated or truncated:
            self.agents = []
        a = self.AGENT
        return {a: obs}, {a: float(reward)}, {a: bool(terminated)}, {a: bool(truncated)}, {a: info}

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()
