"""``cover_v0``: agents blind to one another must each cover a different landmark, and are scored late (vectorised).

A coordination world for comparing critics. Every agent sees every landmark but none of the other agents, so the
team can only spread out by settling on a convention (who covers which landmark); the team's score for a step
counts, for each landmark, only the agent nearest to it. The score of step t is paid ``delay`` steps later, as the
reward of step t + ``delay`` (the last ``delay`` steps of an episode go unscored). The pending scores are part of
the global state, never of an observation.

Why a centralized critic helps here: the effect of a move shows up in the rewards only ``delay`` steps later, mixed
with the other agents' (unseen) moves. A critic on one agent's observation (IPPO) sees neither the pending scores
nor the other agents, so it can only learn of a good move when the reward arrives, discounted by GAE's
``(gamma lambda)^delay``; a critic on the global state (MAPPO) sees the pending scores and every position, so it
credits a move at once.

| | |
| --- | --- |
| agents | ``agent_0`` .. ``agent_{n_agents-1}`` (default 5) |
| action space | ``Discrete(5)``: 0 stay, 1 up, 2 down, 3 left, 4 right, moving ``speed`` (no-op: 0) |
| observation | ``Box(-2, 2, (2 + 3 n_agents,), float32)``: own position; each landmark's offset from it; own index one-hot |
| reward | shared: the score of the step ``delay`` steps back (0 before that), where a step's score is minus the mean over landmarks of the distance from the landmark to its nearest agent |
| termination | none; truncation after ``max_cycles`` (default 25) |
| state | ``Box(-3, 1, (4 n_agents + 1 + delay,), float32)``: every agent's and landmark's position, time fraction, the pending scores (oldest first) |

The arena is the square [-1, 1]^2 (walls stop agents); landmarks start in [-0.8, 0.8]^2. Reference team returns
(sum of the agents' rewards over an episode) with the defaults: random play about -34; every agent
walking straight to the landmark of its own index about -19 (with ``delay=0``: -58 and -22).
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete

from agora_marl.scenarios.builtin._draw import PALETTE, arena_disc, arena_square, canvas
from agora_marl.scenarios.registry import register
from agora_marl.scenarios.vector import VectorScenario, vector_env

_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], np.float64)


class Cover(VectorScenario):
    """K copies of the cover world (see the module docstring for the rules).

    Args:
        num_copies: K.
        n_agents: agents, and landmarks.
        speed: distance an agent moves per step.
        delay: steps between a step and the reward that scores it (0: at once).
        max_cycles: steps per episode.
    """

    name = "cover_v0"
    render_fps = 8

    def __init__(self, num_copies: int, n_agents: int = 5, speed: float = 0.1, delay: int = 10, max_cycles: int = 25):
        super().__init__(num_copies)
        # Upper bounds too: a served world's config comes from a client (see foraging).
        if not (1 <= n_agents <= 64 and 0 < speed <= 10 and 0 <= delay <= 1000 and 1 <= max_cycles <= 100_000):
            raise ValueError(
                "cover needs 1 <= n_agents <= 64, 0 < speed <= 10, 0 <= delay <= 1000 and 1 <= max_cycles <= 100000"
            )
        self.n_agents, self.speed, self.delay, self.max_cycles = n_agents, speed, delay, max_cycles
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        obs_space = Box(-2.0, 2.0, (2 + 3 * n_agents,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: Discrete(5) for a in self.possible_agents}
        self.state_space = Box(-3.0, 1.0, (4 * n_agents + 1 + delay,), np.float32)
        self.pos = np.zeros((self.num_copies, n_agents, 2))
        self.landmarks = np.zeros((self.num_copies, n_agents, 2))
        self.pending = np.zeros((self.num_copies, delay))  # scores not yet paid, oldest first
        self.t = np.zeros(self.num_copies, np.int64)

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        index = self.seed_copies(seed, copies)
        n = self.n_agents
        u = self.uniforms(index, 4 * n).reshape(-1, 2, n, 2)  # one draw per copy: agents, then landmarks
        self.pos[index] = 2 * u[:, 0] - 1
        self.landmarks[index] = 1.6 * u[:, 1] - 0.8
        self.pending[index] = 0
        self.t[index] = 0
        return self._observe()

    def step(self, actions: dict[str, np.ndarray]):
        k, n = self.num_copies, self.n_agents
        act = np.stack([np.asarray(actions[a], np.int64).reshape(k) for a in self.possible_agents], 1)
        self.pos = np.clip(self.pos + self.speed * _MOVES[act], -1.0, 1.0)
        dist = np.linalg.norm(self.pos[:, :, None] - self.landmarks[:, None], axis=-1)  # (K, agent, landmark)
        score = -dist.min(1).mean(1)
        self.t += 1
        if self.delay:
            paid = np.where(self.t > self.delay, self.pending[:, 0], 0.0)
            self.pending = np.concatenate([self.pending[:, 1:], score[:, None]], 1)
        else:
            paid = score
        rewards = np.repeat(paid.astype(np.float32)[:, None], n, 1)
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
        parts = [self.pos.reshape(k, -1), self.landmarks.reshape(k, -1), time, self.pending]
        return np.concatenate(parts, 1).astype(np.float32)

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
    "coordination: agents blind to one another cover landmarks and are scored late (a centralized critic helps)",
    vector_factory=Cover,
)
