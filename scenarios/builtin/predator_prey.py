"""``predator_prey_v0``: a mixed world of two teams with different observation and action spaces.

Slow predators with discrete moves hunt faster prey with continuous velocities in a walled square arena. A prey
is caught when a predator comes within ``catch_radius``: it leaves the world (PettingZoo's shrinking ``agents``
list) and every predator is rewarded. One predator alone rarely corners a faster prey; the team has to.

| | |
| --- | --- |
| agents | ``predator_0`` .. ``predator_{n_predators-1}`` (default 3), ``prey_0`` .. ``prey_{n_prey-1}`` (default 1) |
| predator actions | ``Discrete(5)``: 0 stay, 1 up, 2 down, 3 left, 4 right, at speed ``predator_speed`` (no-op: 0) |
| prey actions | ``Box(-1, 1, (2,), float32)``: a velocity, scaled to at most ``prey_speed`` (no-op: zeros) |
| predator observation | ``Box(-2, 2, (2 + 2 (n_predators - 1) + 3 n_prey,), float32)``: own position; the other predators' offsets; each prey's offset and whether it is still free |
| prey observation | ``Box(-2, 2, (2 + 2 n_predators + 3 (n_prey - 1),), float32)``: own position; every predator's offset; the other prey's offsets and whether they are free |
| predator reward | +1 to every predator for each prey caught this step, minus ``0.01 x`` its distance to the nearest free prey |
| prey reward | -1 when caught, +0.01 for every other step |
| termination | a prey when caught; the predators when no prey is left; truncation after ``max_cycles`` (default 60) |
| info | at the episode's last step, ``winner``: ``"predator"`` when no prey is left, ``"prey"`` when one lasted ``max_cycles`` (``agora eval``'s win rates); empty before |
| state | ``Box(-1, 1, (2 n_predators + 3 n_prey + 1,), float32)``: all positions, prey still free, time fraction |
| scripted players | ``scripted`` (agents/policies.py) plays either side with one prey: each predator runs straight at the prey, the prey flees every predator and the walls |
"""

from __future__ import annotations

import numpy as np
from gymnasium.spaces import Box, Discrete

from agora_marl.scenarios.api import Scenario, scenario_env
from agora_marl.scenarios.builtin._draw import arena_disc, canvas
from agora_marl.scenarios.registry import register

_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], np.float64)


class PredatorPrey(Scenario):
    """Rules of predator-prey (see the module docstring).

    Args:
        n_predators: predators in the hunting team.
        n_prey: prey to catch.
        predator_speed: distance a predator moves per step (the arena is 2 wide).
        prey_speed: the prey's top speed per step.
        catch_radius: a prey this close to a predator is caught.
    """

    name = "predator_prey_v0"
    max_cycles = 60

    def __init__(
        self,
        n_predators: int = 3,
        n_prey: int = 1,
        predator_speed: float = 0.08,
        prey_speed: float = 0.1,
        catch_radius: float = 0.15,
    ):
        if not (1 <= n_predators <= 64 and 1 <= n_prey <= 64):  # bounded: a served world's config is a client's
            raise ValueError("predator_prey needs 1 to 64 predators and 1 to 64 prey")
        self.predators = [f"predator_{i}" for i in range(n_predators)]
        self.prey = [f"prey_{i}" for i in range(n_prey)]
        self.possible_agents = self.predators + self.prey
        self.predator_speed, self.prey_speed, self.catch_radius = predator_speed, prey_speed, catch_radius
        self.t = 0

    def observation_space(self, agent: str) -> Box:
        p, q = len(self.predators), len(self.prey)
        dim = 2 + 2 * (p - 1) + 3 * q if agent in self.predators else 2 + 2 * p + 3 * (q - 1)
        return Box(-2.0, 2.0, (dim,), np.float32)

    def action_space(self, agent: str):
        return Discrete(5) if agent in self.predators else Box(-1.0, 1.0, (2,), np.float32)

    def state_space(self) -> Box:
        return Box(-1.0, 1.0, (2 * len(self.predators) + 3 * len(self.prey) + 1,), np.float32)

    def reset(self) -> None:
        self.predator_pos = self.rng.uniform(-1, 1, (len(self.predators), 2))
        self.prey_pos = self.rng.uniform(-1, 1, (len(self.prey), 2))
        self.free = np.ones(len(self.prey), bool)
        self.caught_now = np.zeros(len(self.prey), bool)
        self.t = 0

    def step(self, actions: dict) -> None:
        for i, agent in enumerate(self.predators):
            self.predator_pos[i] += self.predator_speed * _MOVES[int(actions[agent])]
        for i, agent in enumerate(self.prey):
            if agent in actions:
                velocity = np.asarray(actions[agent], np.float64)
                self.prey_pos[i] += self.prey_speed * velocity / max(1.0, float(np.linalg.norm(velocity)))
        np.clip(self.predator_pos, -1, 1, out=self.predator_pos)
        np.clip(self.prey_pos, -1, 1, out=self.prey_pos)
        near = self._distances() <= self.catch_radius  # (predators, prey)
        self.caught_now = self.free & near.any(0)
        self.free &= ~self.caught_now
        self.t += 1

    def _distances(self) -> np.ndarray:
        return np.linalg.norm(self.predator_pos[:, None, :] - self.prey_pos[None, :, :], axis=-1)

    def observe(self, agent: str) -> np.ndarray:
        if agent in self.predators:
            i = self.predators.index(agent)
            own = self.predator_pos[i]
            others = np.delete(self.predator_pos, i, axis=0) - own
            prey = np.concatenate([(self.prey_pos - own) * self.free[:, None], self.free[:, None]], -1)
            parts = [own, others.ravel(), prey.ravel()]
        else:
            i = self.prey.index(agent)
            own = self.prey_pos[i]
            keep = np.arange(len(self.prey)) != i
            others = np.concatenate([(self.prey_pos[keep] - own) * self.free[keep, None], self.free[keep, None]], -1)
            parts = [own, (self.predator_pos - own).ravel(), others.ravel()]
        return np.concatenate(parts).astype(np.float32)

    def reward(self, agent: str) -> float:
        if agent in self.predators:
            caught = float(self.caught_now.sum())
            if not self.free.any():
                return caught
            i = self.predators.index(agent)
            return caught - 0.01 * float(self._distances()[i, self.free].min())
        return -1.0 if self.caught_now[self.prey.index(agent)] else 0.01

    def terminated(self, agent: str) -> bool:
        if agent in self.predators:
            return not self.free.any()
        return not self.free[self.prey.index(agent)]

    def info(self, agent: str) -> dict:
        # The outcome, on the last step only: batched training ignores infos, and an empty one costs nothing on `act`.
        if not self.free.any():
            return {"winner": "predator"}
        if self.t >= self.max_cycles:
            return {"winner": "prey"}
        return {}

    def state(self) -> np.ndarray:
        time = min(1.0, self.t / self.max_cycles)
        return np.concatenate([self.predator_pos.ravel(), self.prey_pos.ravel(), self.free, [time]]).astype(np.float32)

    def noop_action(self, agent: str):
        return 0 if agent in self.predators else np.zeros(2, np.float32)

    def render(self) -> np.ndarray:
        image = canvas(256)
        for pos in self.predator_pos:
            arena_disc(image, pos, 0.06, (214, 40, 40))
        for pos, free in zip(self.prey_pos, self.free, strict=True):
            arena_disc(image, pos, 0.05, (40, 160, 70) if free else (170, 170, 170))
        return image


def scripted_role(agent: str | None, observation_space, action_space) -> str | None:
    """``"predator"`` or ``"prey"`` when a seat of this name and these spaces is one of this world's with its
    default single prey (what ``scripted`` asks before playing it), else None."""
    if agent is None or not isinstance(observation_space, Box) or observation_space.low.min() != -2.0:
        return None
    dim = observation_space.shape[0] if len(observation_space.shape) == 1 else 0
    if agent.startswith("predator_") and action_space == Discrete(5) and dim >= 3 and dim % 2 == 1:
        return "predator"
    if agent.startswith("prey_") and action_space == Box(-1.0, 1.0, (2,), np.float32) and dim >= 4 and dim % 2 == 0:
        return "prey"
    return None


def scripted_predator_moves(obs: np.ndarray) -> np.ndarray:
    """Moves of scripted predators for a batch of observations ``(B, 2 n_predators + 3)`` (one prey): straight at the
    prey along the axis of the larger offset; stay once it is caught. Each ignores its teammates, so three of them
    herd a fast prey only by luck: a learning team does better."""
    obs = np.asarray(obs, np.float64).reshape(len(obs), -1)
    offset, free = obs[:, -3:-1], obs[:, -1] > 0.5
    along_x = np.abs(offset[:, 0]) >= np.abs(offset[:, 1])
    moves = np.where(along_x, np.where(offset[:, 0] < 0, 3, 4), np.where(offset[:, 1] < 0, 2, 1))
    return np.where(free, moves, 0).astype(np.int64)


def scripted_prey_moves(obs: np.ndarray) -> np.ndarray:
    """Velocities of a scripted prey for a batch of observations ``(B, 2 + 2 n_predators)`` (one prey): away from the
    predators, each weighted by the inverse square of its distance, and off the walls, which would corner it."""
    obs = np.asarray(obs, np.float64).reshape(len(obs), -1)
    own, offsets = obs[:, :2], obs[:, 2:].reshape(len(obs), -1, 2)
    distance = np.maximum(np.linalg.norm(offsets, axis=-1, keepdims=True), 1e-3)
    away = -(offsets / distance**3).sum(1)
    away /= np.maximum(np.linalg.norm(away, axis=-1, keepdims=True), 1e-9)
    walls = -np.sign(own) * np.clip((np.abs(own) - 0.6) / 0.4, 0.0, 1.0)
    velocity = away + 1.5 * walls
    return (velocity / np.maximum(np.linalg.norm(velocity, axis=-1, keepdims=True), 1e-9)).astype(np.float32)


parallel_env = scenario_env(PredatorPrey)
register(
    "predator_prey_v0",
    parallel_env,
    "mixed: a team of slow discrete-move predators hunts faster continuous-move prey in a walled arena",
)
