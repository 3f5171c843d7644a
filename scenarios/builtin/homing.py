"""``homing_v0``: agents blind to one another each walk home to a beacon of their own, paid only as a team
(vectorised).

A world made to show credit assignment. Each agent has its own beacon and sees only itself and that beacon; the
team is paid one pooled reward per step, the same to every agent: minus the mean distance of the agents from their
beacons. The team's value is exactly a sum of each agent's own progress, but no agent is ever paid its own part:
an agent's reward moves as much with the others' steps, which it cannot see, as with its own.

Why the world needs it: an independent learner (IDQN) must pick its own share out of everyone's reward, and with
N agents the others' moves are N - 1 parts of noise for every part of signal; a learner that decomposes the team's
value (VDN's sum, QMIX's monotonic mixer) explains each part of the pooled reward by the agent whose move earned it.
In the worlds that have one (foraging_v0, cover_v0) the difference is drowned by other difficulties (docs/learners.md,
'VDN and QMIX'); here it is the only one.

| | |
| --- | --- |
| agents | ``agent_0`` .. ``agent_{n_agents-1}`` (default 4) |
| action space | ``Discrete(5)``: 0 stay, 1 up, 2 down, 3 left, 4 right, moving ``speed`` (no-op: 0) |
| observation | ``Box(-2, 2, (4,), float32)``: own position; own beacon's offset from it |
| reward | shared: minus the mean over agents of the distance from each agent to its own beacon |
| termination | none; truncation after ``max_cycles`` (default 25) |
| state | ``Box(-1, 1, (4 n_agents + 1,), float32)``: every agent's and beacon's position, time fraction |

The arena is the square [-1, 1]^2 (walls stop agents); beacons start in [-0.8, 0.8]^2. Reference team returns (the
sum of the agents' rewards over an episode) with the defaults: random play about -96, doing nothing about -95, every
agent walking straight to its beacon (:func:`scripted_moves`, the ``scripted`` policy of ``agora eval --baselines``)
about -28.
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete, Space

from agora_marl.scenarios.builtin._draw import PALETTE, arena_disc, arena_square, canvas
from agora_marl.scenarios.registry import register
from agora_marl.scenarios.vector import VectorScenario, vector_env

STAY, UP, DOWN, LEFT, RIGHT = range(5)
_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], np.float64)


class Homing(VectorScenario):
    """K copies of the homing world (see the module docstring for the rules).

    Args:
        num_copies: K.
        n_agents: agents, and beacons.
        speed: distance an agent moves per step.
        max_cycles: steps per episode.
    """

    name = "homing_v0"
    render_fps = 8

    def __init__(self, num_copies: int, n_agents: int = 4, speed: float = 0.1, max_cycles: int = 25):
        super().__init__(num_copies)
        # Upper bounds too: a served world's config comes from a client (see foraging).
        if not (1 <= n_agents <= 64 and 0 < speed <= 10 and 1 <= max_cycles <= 100_000):
            raise ValueError("homing needs 1 <= n_agents <= 64, 0 < speed <= 10 and 1 <= max_cycles <= 100000")
        self.n_agents, self.speed, self.max_cycles = n_agents, speed, max_cycles
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        obs_space = Box(-2.0, 2.0, (4,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: Discrete(5) for a in self.possible_agents}
        self.state_space = Box(-1.0, 1.0, (4 * n_agents + 1,), np.float32)
        self.pos = np.zeros((self.num_copies, n_agents, 2))
        self.beacons = np.zeros((self.num_copies, n_agents, 2))
        self.t = np.zeros(self.num_copies, np.int64)

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        index = self.seed_copies(seed, copies)
        u = self.uniforms(index, 4 * self.n_agents).reshape(-1, 2, self.n_agents, 2)  # agents, then beacons
        self.pos[index] = 2 * u[:, 0] - 1
        self.beacons[index] = 1.6 * u[:, 1] - 0.8
        self.t[index] = 0
        return self._observe()

    def step(self, actions: dict[str, np.ndarray]):
        k, n = self.num_copies, self.n_agents
        act = np.stack([np.asarray(actions[a], np.int64).reshape(k) for a in self.possible_agents], 1)
        self.pos = np.clip(self.pos + self.speed * _MOVES[act], -1.0, 1.0)
        pooled = -np.linalg.norm(self.pos - self.beacons, axis=-1).mean(1)
        self.t += 1
        rewards = np.repeat(pooled.astype(np.float32)[:, None], n, 1)
        truncated = np.repeat((self.t >= self.max_cycles)[:, None], n, 1)
        return self._observe(), rewards, np.zeros((k, n), bool), truncated

    def _observe(self) -> dict[str, np.ndarray]:
        obs = np.concatenate([self.pos, self.beacons - self.pos], -1).astype(np.float32)
        return {a: np.ascontiguousarray(obs[:, i]) for i, a in enumerate(self.possible_agents)}

    def state(self) -> np.ndarray:
        k = self.num_copies
        time = (self.t / self.max_cycles).clip(0, 1)[:, None]
        return np.concatenate([self.pos.reshape(k, -1), self.beacons.reshape(k, -1), time], 1).astype(np.float32)

    def noop_action(self, agent: str) -> int:
        return STAY

    def render(self, copy: int = 0) -> np.ndarray:
        image = canvas(256)
        for i, (pos, beacon) in enumerate(zip(self.pos[copy], self.beacons[copy], strict=True)):
            colour = PALETTE[i % len(PALETTE)]
            arena_square(image, beacon, 0.04, colour)
            arena_disc(image, pos, 0.05, colour)
        return image


def plays(observation_space: Space, action_space: Space) -> bool:
    """Whether a seat with these spaces is a homing_v0 agent (what the ``scripted`` policy checks)."""
    return action_space == Discrete(5) and observation_space == Box(-2.0, 2.0, (4,), np.float32)


def scripted_moves(obs: np.ndarray, speed: float = 0.1) -> np.ndarray:
    """Moves for a batch of observations ``(B, 4)``: straight at the agent's own beacon, along the axis with the
    larger offset; stay once within half a step of it on both axes."""
    offset = np.asarray(obs, np.float64).reshape(-1, 4)[:, 2:]
    x_first = np.abs(offset[:, 0]) >= np.abs(offset[:, 1])
    moves = np.where(x_first, np.where(offset[:, 0] < 0, LEFT, RIGHT), np.where(offset[:, 1] < 0, DOWN, UP))
    return np.where(np.abs(offset).max(1) > speed / 2, moves, STAY).astype(np.int64)


parallel_env = vector_env(Homing)
register(
    "homing_v0",
    parallel_env,
    "credit assignment: agents blind to one another walk to their own beacons, paid only a pooled team reward",
    vector_factory=Homing,
)
