"""``foraging_v0``: level-based foraging, a cooperative grid world written in vectorised form.

Agents with levels walk a ``size`` x ``size`` grid and collect food. A food item is collected when the agents that
stand next to it (up, down, left or right) and choose ``load`` in the same step have levels summing to at least
the food's level; food levels run up to the sum of all agents' levels, so some food needs several agents at once.
Every agent shares the team reward.

| | |
| --- | --- |
| agents | ``agent_0`` .. ``agent_{n_agents-1}`` (default 2), levels drawn from 1..``max_level`` each episode |
| action space | ``Discrete(6)``: 0 stay, 1 north, 2 south, 3 west, 4 east, 5 load (no-op: 0) |
| observation | ``Box(-1, 1, (3 + 3 (n_agents - 1) + 4 n_food,), float32)``: own row, column, level; then for each other agent its row and column offsets and level; then for each food its offsets, level and whether it is still there (zeros once collected). Positions are divided by ``size - 1``, levels by their maximum |
| reward | shared: the levels of the food collected this step divided by the total food level of the episode (team return 1.0 when everything is collected) |
| termination | all food collected; truncation after ``max_cycles`` (default 50) steps |
| state | ``Box(0, 1, (3 n_agents + 4 n_food + 1,), float32)``: every position and level, food still there, time fraction |

Moves: an agent cannot step off the grid, onto food or onto a cell that another agent occupies at the start of the
step; when two agents move to the same cell neither moves. Food is placed away from the border so that all four
sides can be reached.
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete

from agora_marl.scenarios.builtin._draw import PALETTE
from agora_marl.scenarios.registry import register
from agora_marl.scenarios.vector import VectorScenario, vector_env

STAY, NORTH, SOUTH, WEST, EAST, LOAD = range(6)
_DELTAS = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], dtype=np.int64)
_CELL = 32  # pixels per grid cell when rendering


class Foraging(VectorScenario):
    """K copies of level-based foraging (see the module docstring for the rules).

    Args:
        num_copies: K.
        size: side of the square grid (at least 3).
        n_agents: number of agents.
        n_food: food items per episode (at most (size - 2)^2).
        max_level: agents' levels are drawn from 1..max_level.
        max_cycles: steps before truncation.
    """

    name = "foraging_v0"
    render_fps = 5

    def __init__(
        self,
        num_copies: int,
        size: int = 6,
        n_agents: int = 2,
        n_food: int = 2,
        max_level: int = 2,
        max_cycles: int = 50,
    ):
        super().__init__(num_copies)
        # Upper bounds too: a served world's config comes from a client, and building a 10**9-sided grid would hold
        # the server's loop for everyone.
        if not (3 <= size <= 64 and 1 <= n_agents <= 16 and 1 <= max_level <= 100 and 1 <= max_cycles <= 100_000):
            raise ValueError(
                "foraging needs 3 <= size <= 64, 1 <= n_agents <= 16, 1 <= max_level <= 100 and "
                "1 <= max_cycles <= 100000"
            )
        if not 1 <= n_food <= (size - 2) ** 2 or n_agents + n_food > size * size:
            raise ValueError(f"{n_food} food and {n_agents} agents do not fit on a {size}x{size} grid")
        self.size, self.n_agents, self.n_food, self.max_level = size, n_agents, n_food, max_level
        self.max_cycles = max_cycles
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        obs_dim = 3 + 3 * (n_agents - 1) + 4 * n_food
        obs_space = Box(-1.0, 1.0, (obs_dim,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: Discrete(6) for a in self.possible_agents}
        self.state_space = Box(0.0, 1.0, (3 * n_agents + 4 * n_food + 1,), np.float32)
        k = self.num_copies
        self.agent_pos = np.zeros((k, n_agents, 2), np.int64)
        self.agent_level = np.ones((k, n_agents), np.int64)
        self.food_pos = np.zeros((k, n_food, 2), np.int64)
        self.food_level = np.ones((k, n_food), np.int64)
        self.food_left = np.zeros((k, n_food), bool)
        self.total_food = np.ones(k, np.int64)
        self.t = np.zeros(k, np.int64)
        others = [[j for j in range(n_agents) if j != i] for i in range(n_agents)]
        self._others = np.array(others, np.intp).reshape(n_agents, n_agents - 1)
        self._not_self = ~np.eye(n_agents, dtype=bool)
        interior = [(r, c) for r in range(1, size - 1) for c in range(1, size - 1)]
        self._interior = np.array(interior, np.int64)

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        index = self.seed_copies(seed, copies)
        n, f, size, interior = self.n_agents, self.n_food, self.size, len(self._interior)
        u = self.uniforms(index, n + interior + size * size + f)  # one draw per copy, split below
        levels = 1 + (u[:, :n] * self.max_level).astype(np.int64)
        # Sorting random keys gives a uniformly random order: the first f interior cells get food, and the first n
        # cells that hold no food get agents.
        food_cells = self._interior[np.argsort(u[:, n : n + interior], axis=1)[:, :f]]
        cell_keys = u[:, n + interior : n + interior + size * size].copy()
        np.put_along_axis(cell_keys, food_cells[..., 0] * size + food_cells[..., 1], np.inf, axis=1)
        agent_cells = np.argsort(cell_keys, axis=1)[:, :n]
        food_levels = 1 + (u[:, -f:] * levels.sum(1, keepdims=True)).astype(np.int64)
        self.agent_pos[index] = np.stack(np.divmod(agent_cells, size), axis=-1)
        self.agent_level[index] = levels
        self.food_pos[index] = food_cells
        self.food_level[index] = food_levels
        self.food_left[index] = True
        self.total_food[index] = food_levels.sum(1)
        self.t[index] = 0
        return self._observe()

    def step(self, actions: dict[str, np.ndarray]):
        act = np.stack([np.asarray(actions[a], np.int64).reshape(self.num_copies) for a in self.possible_agents], 1)
        self._move(act)
        # Loading: the levels of the loading agents next to each food item must reach the food's level.
        dist = np.abs(self.agent_pos[:, :, None, :] - self.food_pos[:, None, :, :]).sum(-1)  # (K, N, F)
        loaders = (dist == 1) & self.food_left[:, None, :] & (act == LOAD)[:, :, None]
        load = (loaders * self.agent_level[:, :, None]).sum(1)  # (K, F)
        eaten = self.food_left & (load > 0) & (load >= self.food_level)
        self.food_left &= ~eaten
        gained = (eaten * self.food_level).sum(1) / self.total_food
        self.t += 1
        n = self.n_agents
        rewards = np.repeat(gained.astype(np.float32)[:, None], n, 1)
        done = ~self.food_left.any(1)
        terminated = np.repeat(done[:, None], n, 1)
        truncated = np.repeat(((self.t >= self.max_cycles) & ~done)[:, None], n, 1)
        return self._observe(), rewards, terminated, truncated

    def _move(self, act: np.ndarray) -> None:
        target = self.agent_pos + _DELTAS[act]
        moving = (act >= NORTH) & (act <= EAST)
        inside = ((target >= 0) & (target < self.size)).all(-1)
        on_food = ((target[:, :, None, :] == self.food_pos[:, None, :, :]).all(-1) & self.food_left[:, None, :]).any(-1)
        # A moving agent's target is never its own cell, so this only finds other agents.
        on_agent = (target[:, :, None, :] == self.agent_pos[:, None, :, :]).all(-1).any(-1)
        valid = moving & inside & ~on_food & ~on_agent
        proposed = np.where(valid[..., None], target, self.agent_pos)
        same = (proposed[:, :, None, :] == proposed[:, None, :, :]).all(-1) & self._not_self
        go = valid & ~same.any(-1)
        self.agent_pos = np.where(go[..., None], target, self.agent_pos)

    def _observe(self) -> dict[str, np.ndarray]:
        k, n, f = self.num_copies, self.n_agents, self.n_food
        scale = self.size - 1
        own = np.empty((k, n, 3), np.float32)
        own[..., :2] = self.agent_pos / scale
        own[..., 2] = self.agent_level / self.max_level
        other = np.empty((k, n, n - 1, 3), np.float32)  # row i: the other agents in index order, seen from agent i
        other[..., :2] = (self.agent_pos[:, self._others] - self.agent_pos[:, :, None]) / scale
        other[..., 2] = self.agent_level[:, self._others] / self.max_level
        food = np.empty((k, n, f, 4), np.float32)
        food[..., :2] = (self.food_pos[:, None] - self.agent_pos[:, :, None]) / scale
        food[..., 2] = (self.food_level / (n * self.max_level))[:, None]
        food[..., 3] = 1.0
        food *= self.food_left[:, None, :, None]
        obs = np.concatenate([own, other.reshape(k, n, -1), food.reshape(k, n, -1)], -1)
        return {a: np.ascontiguousarray(obs[:, i]) for i, a in enumerate(self.possible_agents)}

    def state(self) -> np.ndarray:
        scale = self.size - 1
        parts = [
            self.agent_pos.reshape(self.num_copies, -1) / scale,
            self.agent_level / self.max_level,
            self.food_pos.reshape(self.num_copies, -1) / scale,
            self.food_level / (self.n_agents * self.max_level),
            self.food_left,
            (self.t / self.max_cycles)[:, None].clip(0, 1),
        ]
        return np.concatenate(parts, -1).astype(np.float32)

    def noop_action(self, agent: str) -> int:
        return STAY

    def render(self, copy: int = 0) -> np.ndarray:
        side = self.size * _CELL
        image = np.full((side, side, 3), 245, np.uint8)
        image[::_CELL] = image[:, ::_CELL] = 200
        yy, xx = np.mgrid[0:_CELL, 0:_CELL] - (_CELL - 1) / 2
        disc = yy**2 + xx**2 <= (0.4 * _CELL) ** 2
        for (r, c), level, left in zip(self.food_pos[copy], self.food_level[copy], self.food_left[copy], strict=True):
            if left:
                pad = 3
                image[r * _CELL + pad : (r + 1) * _CELL - pad, c * _CELL + pad : (c + 1) * _CELL - pad] = [
                    40,
                    150 - min(100, 20 * int(level)),
                    40,
                ]
                _pips(image, r, c, int(level))
        for i, ((r, c), level) in enumerate(zip(self.agent_pos[copy], self.agent_level[copy], strict=True)):
            cell = image[r * _CELL : (r + 1) * _CELL, c * _CELL : (c + 1) * _CELL]
            cell[disc] = PALETTE[i % len(PALETTE)]
            _pips(image, r, c, int(level))
        return image


def _pips(image: np.ndarray, row: int, col: int, count: int) -> None:
    """Draw a level as ``count`` small white squares across the middle of a cell."""
    count = min(count, 5)
    left = col * _CELL + _CELL // 2 - 2 * count
    top = row * _CELL + _CELL // 2 - 1
    for p in range(count):
        image[top : top + 3, left + 4 * p + 1 : left + 4 * p + 4] = 255


parallel_env = vector_env(Foraging)
register(
    "foraging_v0",
    parallel_env,
    "cooperative level-based foraging on a grid: agents load food together when their levels add up",
    vector_factory=Foraging,
)
