"""``cover_v0``: agents that cannot see one another must each cover a different landmark (vectorised form).

A coordination world for comparing critics. Every agent sees every landmark but none of the other agents, so the
team can only spread out by agreeing on a convention (who covers which landmark); the shared reward counts, for each
landmark, only the agent nearest to it. An agent's own observation therefore says little about the team's return,
which mostly depends on where the others are: a critic that sees the global state (MAPPO) predicts the return far
better than one that sees a single agent's observation (IPPO), and learns faster on the same budget.

| | |
| --- | --- |
| agents | ``agent_0`` .. ``agent_{n_agents-1}`` (default 5) |
| action space | ``Discrete(5)``: 0 stay, 1 up, 2 down, 3 left, 4 right, moving ``speed`` (no-op: 0) |
| observation | ``Box(-2, 2, (2 + 3 n_agents,), float32)``: own position; each landmark's offset from it; own index one-hot |
| reward | shared, every step: minus the mean over landmarks of the distance from the landmark to its nearest agent |
| termination | none; truncation after ``max_cycles`` (default 25) |
| state | ``Box(-1, 1, (4 n_agents + 1,), float32)``: every agent's and landmark's position, time fraction |

The arena is the square [-1, 1]^2 (walls stop agents); landmarks start in [-0.8, 0.8]^2. Reference points for the
team return (the sum of the agents' rewards over an episode) with 5 agents: random play about -57; every agent
walking straight to the landmark of its own index about -21.
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete

from scenarios.builtin._draw import PALETTE, arena_disc, arena_square, canvas
from scenarios.registry import register
from scenarios.vector import VectorScenario, vector_env

_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], np.float64)


class Cover(VectorScenario):
    """K copies of the cover world (see the module docstring for the rules).

    Args:
        num_copies: K.
        n_agents: agents, and landmarks.
        speed: distance an agent moves per step.
        max_cycles: steps per episode.
    """

    name = "cover_v0"
    render_fps = 8

    def __init__(self, num_copies: int, n_agents: int = 5, speed: float = 0.1, max_cycles: int = 25):
        super().__init__(num_copies)
        if n_agents < 1 or speed <= 0 or max_cycles < 1:
            raise ValueError("cover needs n_agents >= 1, speed > 0 and max_cycles >= 1")
        self.n_agents, self.speed, self.max_cycles = n_agents, speed, max_cycles
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        obs_space = Box(-2.0, 2.0, (2 + 3 * n_agents,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: Discrete(5) for a in self.possible_agents}
        self.state_space = Box(-1.0, 1.0, (4 * n_agents + 1,), np.float32)
        self.pos = np.zeros((self.num_copies, n_agents, 2))
        self.landmarks = np.zeros((self.num_copies, n_agents, 2))
        self.t = np.zeros(self.num_copies, np.int64)

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        index = self.seed_copies(seed, copies)
        n = self.n_agents
        u = self.uniforms(index, 4 * n).reshape(-1, 2, n, 2)  # one draw per copy: agents, then landmarks
        self.pos[index] = 2 * u[:, 0] - 1
        self.landmarks[index] = 1.6 * u[:, 1] - 0.8
        self.t[index] = 0
        return self._observe()

    def step(self, actions: dict[str, np.ndarray]):
        k, n = self.num_copies, self.n_agents
        act = np.stack([np.asarray(actions[a], np.int64).reshape(k) for a in self.possible_agents], 1)
        self.pos = np.clip(self.pos + self.speed * _MOVES[act], -1.0, 1.0)
        dist = np.linalg.norm(self.pos[:, :, None] - self.landmarks[:, None], axis=-1)  # (K, agent, landmark)
        team = -dist.min(1).mean(1)
        self.t += 1
        rewards = np.repeat(team.astype(np.float32)[:, None], n, 1)
        truncated = np.repeat((self.t >= self.max_cycles)[:, None], n, 1)
        return self._observe(), rewards, np.zeros((k, n), bool), truncated

    def _observe(self) -> dict[str, np.ndarray]:
        k, n = self.num_copies, self.n_agents
        obs = np.empty((k, n, 2 + 3 * n), np.float32)
        obs[..., :2] = self.pos
        obs[..., 2 : 2 + 2 * n] = (self.landmarks[:, None] - self.pos[:, :, None]).reshape(k, n, 2 * n)
        obs[..., 2 + 2 * n :] = np.eye(n, dtype=np.float32)
        return {a: np.ascontiguousarray(obs[:, i]) for i, a in enumerate(self.possible_agents)}

    def state(self) -> np.ndarray:
        k = self.num_copies
        time = (self.t / self.max_cycles).clip(0, 1)[:, None]
        return np.concatenate([self.pos.reshape(k, -1), self.landmarks.reshape(k, -1), time], 1).astype(np.float32)

    def noop_action(self, agent: str) -> int:
        return 0

    def render(self, copy: int = 0) -> np.ndarray:
        image = canvas(256)
        for landmark in self.landmarks[copy]:
            arena_square(image, landmark, 0.04, (90, 90, 90))
        for i, pos in enumerate(self.pos[copy]):
            arena_disc(image, pos, 0.05, PALETTE[i % len(PALETTE)])
        return image


parallel_env = vector_env(Cover)
register(
    "cover_v0",
    parallel_env,
    "coordination: agents blind to one another must each cover a different landmark (MAPPO's critic helps)",
    vector_factory=Cover,
)
