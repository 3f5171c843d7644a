"""``drift_v0``: a vectorised scenario written from scratch, with continuous actions, truncation and rendering.

The example docs/scenarios.md walks through ("The vectorised form"). Agents push themselves with a velocity
(``Box(-1, 1, (2,))``) towards one goal in the square [-1, 1]^2; each is rewarded minus its distance to it. A copy's
episode ends when every agent is within ``reach`` of the goal (terminated) or after ``max_cycles`` steps
(truncated).

    agora scenarios check drift_v0 --module examples/drift_vector.py
    agora record --scenario drift_v0 --module examples/drift_vector.py --policy random --out drift.gif
    agora serve --scenario-module examples/drift_vector.py
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box

from agora_marl.scenarios import VectorScenario, register, vector_env


class Drift(VectorScenario):
    """K copies of the drift world.

    Args:
        num_copies: K (the server passes it; the per-copy form is K = 1).
        n_agents: agents per copy.
        speed: distance an agent moves per step at full push.
        reach: distance to the goal at which an agent has arrived.
        max_cycles: steps before a copy is truncated.
    """

    name = "drift_v0"
    render_fps = 10  # the per-copy form's metadata["render_fps"]: agora record plays frames at this rate

    def __init__(self, num_copies: int, n_agents: int = 2, speed: float = 0.1, reach: float = 0.1, max_cycles=50):
        super().__init__(num_copies)
        # A served world's config comes from a client: bound it.
        if not (1 <= n_agents <= 16 and 0 < speed <= 1 and 0 < reach <= 1 and 1 <= max_cycles <= 10_000):
            raise ValueError("drift needs 1 <= n_agents <= 16, 0 < speed <= 1, 0 < reach <= 1, 1 <= max_cycles <= 1e4")
        self.n_agents, self.speed, self.reach, self.max_cycles = n_agents, speed, reach, int(max_cycles)
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        # Spaces are per agent and for ONE copy; arrays carry a leading K.
        self.observation_spaces = {a: Box(-2.0, 2.0, (4,), np.float32) for a in self.possible_agents}
        self.action_spaces = {a: Box(-1.0, 1.0, (2,), np.float32) for a in self.possible_agents}
        self.state_space = None  # the server then offers the concatenated observations as the state
        self.pos = np.zeros((num_copies, n_agents, 2))
        self.goal = np.zeros((num_copies, 2))
        self.t = np.zeros(num_copies, np.int64)

    def reset(self, seed=None, copies=None):
        # seed_copies seeds copy i with seed + i (unseeded copies continue their generators) and returns the indices
        # of the copies to reset: all of them for copies=None, else the listed ones, as an int array.
        index = self.seed_copies(seed, copies)
        # uniforms(index, m): m numbers in [0, 1) from each listed copy's own generator, shape (len(index), m).
        u = self.uniforms(index, 2 * self.n_agents + 2) * 1.6 - 0.8
        self.pos[index] = u[:, :-2].reshape(-1, self.n_agents, 2)
        self.goal[index] = u[:, -2:]
        self.t[index] = 0
        return self._observe()  # the observations of ALL copies, reset or not

    def step(self, actions):
        # actions[agent] is (K, 2) float32, inside the Box: the server checked the bounds before this call.
        push = np.stack([actions[a] for a in self.possible_agents], axis=1)  # (K, N, 2)
        self.pos = np.clip(self.pos + self.speed * push, -1.0, 1.0)
        self.t += 1
        distance = np.linalg.norm(self.pos - self.goal[:, None], axis=-1)  # (K, N)
        rewards = (-distance).astype(np.float32)
        # Flags are (K, N) bools, columns in possible_agents order, and set for every agent of a copy at once: a
        # copy's episode ends at the step where any flag of it is set; step never resets (the server resets the
        # finished copies with reset(copies=...), after sending this step's obs as their final observations).
        arrived = (distance < self.reach).all(axis=1, keepdims=True)  # a real end: terminated
        timeout = (self.t >= self.max_cycles)[:, None] & ~arrived  # a time limit: truncated (learners bootstrap)
        terminated = np.repeat(arrived, self.n_agents, axis=1)
        truncated = np.repeat(timeout, self.n_agents, axis=1)
        return self._observe(), rewards, terminated, truncated

    def _observe(self):
        goal = np.broadcast_to(self.goal[:, None], self.pos.shape)
        obs = np.concatenate([self.pos, goal - self.pos], axis=-1).astype(np.float32)  # (K, N, 4)
        # Fresh C-contiguous arrays, one per agent: the server keeps and sends them without copying.
        return {a: np.ascontiguousarray(obs[:, i]) for i, a in enumerate(self.possible_agents)}

    def noop_action(self, agent):
        return np.zeros(2, np.float32)

    def render(self, copy=0):
        # Copy `copy` as an RGB uint8 (H, W, 3) picture. Defining render is what makes both forms draw: the per-copy
        # form (vector_env) then declares metadata["render_modes"] = ["rgb_array"] for agora record, and a served
        # vector-backed world answers the render op (agora watch) with render(its copy index).
        size = 128
        image = np.full((size, size, 3), 240, np.uint8)
        yy, xx = np.mgrid[:size, :size]

        def disc(pos, radius, colour):
            cx, cy = (pos[0] + 1) * (size - 1) / 2, (1 - pos[1]) * (size - 1) / 2
            image[(xx - cx) ** 2 + (yy - cy) ** 2 <= (radius * (size - 1) / 2) ** 2] = colour

        disc(self.goal[copy], self.reach, (120, 200, 120))
        for pos in self.pos[copy]:
            disc(pos, 0.05, (66, 133, 244))
        return image


parallel_env = vector_env(Drift)  # the per-copy form: a PettingZoo ParallelEnv of one copy, for free
register(
    "drift_v0", parallel_env, "agents push towards one goal (vectorised, continuous actions)", vector_factory=Drift
)
