"""``coin_duel_v0``: two players race for coins on a small grid, a symmetric zero-sum duel (vectorised).

Both players have the same spaces and see the world from their own side (own position first), so one network can
play either seat: the world for self-play. Each episode places three coins; a player collects a coin by stepping
onto it, and a coin both players reach at the same step is lost to both. The player with more coins wins.

| | |
| --- | --- |
| agents | ``player_0``, ``player_1`` |
| action space | ``Discrete(5)``: 0 stay, 1 up (row - 1), 2 down, 3 left (column - 1), 4 right (no-op: 0) |
| observation | ``Box(-1, 1, (15,), float32)``: own row and column scaled to [-1, 1]; the opponent's offset; for each coin, nearest first (Manhattan distance, then index; taken coins last, as zeros), its offset and a 1; own score minus the opponent's, divided by 3; the fraction of the episode left. Offsets are divided by ``size - 1`` |
| reward | zero-sum: +1 for each coin the player collects this step, -1 for each coin the opponent collects |
| termination | every coin taken; truncation after ``max_cycles`` (default 20) steps |
| state | ``Box(-1, 1, (16,), float32)``: both positions, each coin's position and whether it is there (positions scaled to [-1, 1]), the score difference of ``player_0`` divided by 3, the fraction of the episode gone |

The outcome of an episode is the sign of a player's return (its coins minus the opponent's): +1 a win, -1 a loss,
0 a draw (a lost coin or the time limit can leave the score even). The batched path carries no infos, so the
return is where the winner is read (learners/selfplay.py does).

Starts are fair: ``player_1`` starts on the mirror image of ``player_0``'s cell through the centre of the grid, the
centre cell itself excluded; coins start on distinct cells that no player holds. Players may share a cell.
``scripted`` (agents/policies.py) walks to the nearest coin: random play wins 1.5% of its games against it
(4,000 games), and it wins 37% (26% draws) against itself.
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete, Space

from agora_marl.scenarios.builtin._draw import PALETTE
from agora_marl.scenarios.registry import register
from agora_marl.scenarios.vector import VectorScenario, vector_env

STAY, UP, DOWN, LEFT, RIGHT = range(5)
COINS = 3
OBS_DIM = 4 + 3 * COINS + 2
_DELTAS = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], np.int64)
_CELL = 32  # pixels per grid cell when rendering


class CoinDuel(VectorScenario):
    """K copies of the coin duel (see the module docstring for the rules).

    Args:
        num_copies: K.
        size: side of the square grid (3 to 16).
        max_cycles: steps before truncation.
    """

    name = "coin_duel_v0"
    render_fps = 5

    def __init__(self, num_copies: int, size: int = 5, max_cycles: int = 20):
        super().__init__(num_copies)
        if not (3 <= size <= 16 and 1 <= max_cycles <= 100_000):  # bounded: a served world's config is a client's
            raise ValueError("coin_duel needs 3 <= size <= 16 and 1 <= max_cycles <= 100000")
        self.size, self.max_cycles = int(size), int(max_cycles)
        self.possible_agents = ["player_0", "player_1"]
        obs_space = Box(-1.0, 1.0, (OBS_DIM,), np.float32)
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: Discrete(5) for a in self.possible_agents}
        self.state_space = Box(-1.0, 1.0, (4 + 3 * COINS + 2,), np.float32)
        k = self.num_copies
        self.pos = np.zeros((k, 2, 2), np.int64)  # (copy, player, row/column)
        self.coins = np.zeros((k, COINS, 2), np.int64)
        self.present = np.zeros((k, COINS), bool)
        self.score = np.zeros((k, 2), np.int64)
        self.t = np.zeros(k, np.int64)
        cells = size * size
        # player_0 starts anywhere but the centre (the mirror of the centre is itself).
        self._starts = np.array([c for c in range(cells) if not (size % 2 and c == cells // 2)], np.int64)

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        index = self.seed_copies(seed, copies)
        size, cells = self.size, self.size * self.size
        u = self.uniforms(index, 1 + cells)  # one draw per copy: the start, then a random key per cell
        start = self._starts[(u[:, 0] * len(self._starts)).astype(np.int64)]
        mirror = cells - 1 - start
        keys = u[:, 1:].copy()
        rows = np.arange(len(index))
        keys[rows, start] = keys[rows, mirror] = np.inf  # sorting random keys: the first COINS free cells get coins
        coin_cells = np.argsort(keys, axis=1)[:, :COINS]
        self.pos[index] = np.stack([np.stack(np.divmod(start, size), -1), np.stack(np.divmod(mirror, size), -1)], 1)
        self.coins[index] = np.stack(np.divmod(coin_cells, size), -1)
        self.present[index] = True
        self.score[index] = 0
        self.t[index] = 0
        return self._observe()

    def step(self, actions: dict[str, np.ndarray]):
        k = self.num_copies
        act = np.stack([np.asarray(actions[a], np.int64).reshape(k) for a in self.possible_agents], 1)
        self.pos = np.clip(self.pos + _DELTAS[act], 0, self.size - 1)
        on = (self.pos[:, :, None, :] == self.coins[:, None, :, :]).all(-1) & self.present[:, None, :]  # (K, 2, C)
        taken = on.any(1)
        alone = on & ~on.all(1, keepdims=True)  # a coin reached by both at once scores for neither
        got = alone.sum(2)  # (K, 2)
        self.present &= ~taken
        self.score += got
        self.t += 1
        gain = (got[:, 0] - got[:, 1]).astype(np.float32)
        rewards = np.stack([gain, -gain], 1)
        done = ~self.present.any(1)
        terminated = np.repeat(done[:, None], 2, 1)
        truncated = np.repeat(((self.t >= self.max_cycles) & ~done)[:, None], 2, 1)
        return self._observe(), rewards, terminated, truncated

    def _observe(self) -> dict[str, np.ndarray]:
        k, scale = self.num_copies, self.size - 1
        obs = np.zeros((k, 2, OBS_DIM), np.float32)
        for i, j in ((0, 1), (1, 0)):  # each player sees itself first
            own = self.pos[:, i]
            obs[:, i, 0:2] = 2 * own / scale - 1
            obs[:, i, 2:4] = (self.pos[:, j] - own) / scale
            offset = self.coins - own[:, None]
            # Nearest first (then by index), taken coins last: the view does the sorting a network finds hard.
            key = np.where(self.present, np.abs(offset).sum(-1), 4 * self.size) * COINS + np.arange(COINS)
            order = np.argsort(key, axis=1)
            coin = np.concatenate([offset / scale, np.ones((k, COINS, 1))], -1) * self.present[..., None]
            obs[:, i, 4 : 4 + 3 * COINS] = np.take_along_axis(coin, order[..., None], 1).reshape(k, -1)
            obs[:, i, -2] = (self.score[:, i] - self.score[:, j]) / COINS
            obs[:, i, -1] = 1 - np.minimum(self.t, self.max_cycles) / self.max_cycles
        return {a: np.ascontiguousarray(obs[:, i]) for i, a in enumerate(self.possible_agents)}

    def state(self) -> np.ndarray:
        k, scale = self.num_copies, self.size - 1
        parts = [
            (2 * self.pos / scale - 1).reshape(k, -1),
            np.concatenate([2 * self.coins / scale - 1, self.present[..., None]], -1).reshape(k, -1),
            ((self.score[:, 0] - self.score[:, 1]) / COINS)[:, None],
            (np.minimum(self.t, self.max_cycles) / self.max_cycles)[:, None],
        ]
        return np.concatenate(parts, 1).astype(np.float32)

    def noop_action(self, agent: str) -> int:
        return STAY

    def render(self, copy: int = 0) -> np.ndarray:
        side = self.size * _CELL
        image = np.full((side, side, 3), 245, np.uint8)
        image[::_CELL] = image[:, ::_CELL] = 200
        pad = 9
        for (r, c), there in zip(self.coins[copy], self.present[copy], strict=True):
            if there:
                image[r * _CELL + pad : (r + 1) * _CELL - pad, c * _CELL + pad : (c + 1) * _CELL - pad] = (230, 180, 0)
        yy, xx = np.mgrid[0:_CELL, 0:_CELL] - (_CELL - 1) / 2
        for i, (r, c) in enumerate(self.pos[copy]):
            # player_1 a smaller disc, so that both show when they share a cell
            disc = yy**2 + xx**2 <= ((0.4 - 0.15 * i) * _CELL) ** 2
            image[r * _CELL : (r + 1) * _CELL, c * _CELL : (c + 1) * _CELL][disc] = PALETTE[i]
        return image


def plays(observation_space: Space, action_space: Space) -> bool:
    """Whether a seat with these spaces is a coin duel player's (what ``scripted`` asks before playing it)."""
    return action_space == Discrete(5) and observation_space == Box(-1.0, 1.0, (OBS_DIM,), np.float32)


def scripted_moves(obs: np.ndarray) -> np.ndarray:
    """The scripted player's moves for a batch of observations ``(B, 15)``: towards the nearest coin still there
    (Manhattan distance; the lowest index on ties), along the axis with the larger offset (rows on ties); it stays
    when no coin is left. It ignores the opponent, which is how a learner beats it."""
    obs = np.asarray(obs, np.float64).reshape(-1, OBS_DIM)
    coins = obs[:, 4 : 4 + 3 * COINS].reshape(-1, COINS, 3)
    offset, there = coins[..., :2], coins[..., 2] > 0.5
    distance = np.where(there, np.abs(offset).sum(-1), np.inf)
    target = offset[np.arange(len(obs)), distance.argmin(1)]
    rows_first = np.abs(target[:, 0]) >= np.abs(target[:, 1])
    moves = np.where(rows_first, np.where(target[:, 0] < 0, UP, DOWN), np.where(target[:, 1] < 0, LEFT, RIGHT))
    return np.where(there.any(1) & (np.abs(target).sum(1) > 0), moves, STAY).astype(np.int64)


parallel_env = vector_env(CoinDuel)
register(
    "coin_duel_v0",
    parallel_env,
    "competitive, symmetric: two players race for coins on a grid (zero-sum; the world for self-play)",
    vector_factory=CoinDuel,
)
