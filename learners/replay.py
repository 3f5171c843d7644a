"""A replay buffer of joint transitions: one row per world and step, every seat the learner holds in it.

Off-policy learners that reason about the team (value decomposition's mixers, MADDPG's centralized Q(s, a) critics)
need what the agents did *together*: per row, the observation and action of every seat, each seat's reward, the
team rewards, the world's global state before and after (where the learner is granted it) and the episode flags.
:class:`JointReplay` keeps exactly that, in numpy ring buffers, added K rows at a time from a batched step of K
worlds (:meth:`JointReplay.add`) and sampled in bulk as torch tensors (:meth:`JointReplay.sample`). Independent
learners use the same rows one seat at a time.

Episode ends are recorded right where the server auto-resets a world, so that the row's next observation always
belongs to the episode the row's action was taken in:

- a world whose episode ended at this step (``episode_over``, by termination or truncation) has already started
  its next episode; the row's next observations and next state are the ended episode's last ones (the batch
  reply's ``final_obs`` and ``final_state``), never the new episode's first;
- ``terminated`` marks the seats whose value ends there (no bootstrap); a seat ``truncated`` was cut short and its
  next observation's value still counts;
- a seat truncated while its world goes on (PettingZoo lets one agent leave early) has no final observation on the
  wire: its next observation is the one it acted on (the best estimate the learner has of where it stopped);
- a seat that was not alive before the step (dead in a shrinking ``agents`` list) did not act: ``alive`` is False
  in that row and its observation and action are zeros and the space's lowest action; rows in which no held seat
  acted are not stored.

:meth:`JointBatch.continues` (alive and not terminated) is the mask of seats whose next value enters a target.

The buffer's whole content, cursor included, travels through :meth:`JointReplay.state_dict` and
:meth:`JointReplay.load_state_dict` as tensors (checkpoints load with ``torch.load(weights_only=True)``), so a run
resumed from a checkpoint samples exactly the rows an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from agora_marl.agents.batched import BatchResult

_FLAGS = ("alive", "terminated", "truncated")


@dataclass
class JointBatch:
    """Sampled rows as tensors on one device; per-seat tensors are keyed by agent, per-row ones have n rows.

    Observations are flattened to ``(n, features)`` float32. Actions keep the space's values (what was sent to the
    server: a Discrete action includes the space's ``start``) and shape: int64 for Discrete and MultiDiscrete,
    float32 for Box.
    """

    agents: list[str]
    """The seats, in column order of ``rewards`` and the flags."""
    obs: dict[str, torch.Tensor]
    """``{agent: (n, features)}``: what each seat acted on."""
    actions: dict[str, torch.Tensor]
    """``{agent: (n, *action_shape)}``: the joint action."""
    next_obs: dict[str, torch.Tensor]
    """``{agent: (n, features)}``: what each seat saw after the step (the ended episode's last at an episode end)."""
    rewards: torch.Tensor
    """``(n, N)`` float32: each seat's reward of the step."""
    team_rewards: dict[str, torch.Tensor]
    """``{team: (n,)}``: the sum of the team's seats' rewards."""
    alive: torch.Tensor
    """``(n, N)`` bool: the seat was alive before the step (it acted)."""
    terminated: torch.Tensor
    """``(n, N)`` bool: the seat's episode ended at this step with no value beyond it."""
    truncated: torch.Tensor
    """``(n, N)`` bool: the seat's episode was cut short at this step (its next observation's value still counts)."""
    episode_over: torch.Tensor
    """``(n,)`` bool: the world's episode ended at this step (the server auto-reset it)."""
    state: torch.Tensor | None
    """``(n, state_features)`` float32: the world's global state before the step; None when not granted."""
    next_state: torch.Tensor | None
    """``(n, state_features)`` float32: the state after the step (the ended episode's last at an episode end)."""

    def continues(self) -> torch.Tensor:
        """``(n, N)`` bool: seats that acted and whose next observation's value enters a bootstrapped target."""
        return self.alive & ~self.terminated

    def columns(self, agents: Sequence[str]) -> list[int]:
        """The column indices of ``agents`` in the per-row tensors."""
        return [self.agents.index(a) for a in agents]


class JointReplay:
    """A ring buffer of joint transitions, ``capacity`` rows (world-steps), the oldest overwritten first.

    Args:
        capacity: rows kept.
        agents: the seats the learner holds, in the order of the batch replies' columns (``worlds.possible_agents``).
        observation_spaces: each seat's observation space (Box; stored flattened, float32).
        action_spaces: each seat's action space (Discrete, MultiDiscrete or Box).
        state_space: the world's global state space (Box), when the learner is granted the state; None otherwise.
        teams: team name -> its seats, the teams whose summed rewards are kept (default: one team ``"all"`` of
            every seat).

    Raises:
        ValueError: a space the buffer cannot store, or a team seat the learner does not hold.
    """

    def __init__(
        self,
        capacity: int,
        agents: Sequence[str],
        observation_spaces: Mapping[str, spaces.Space],
        action_spaces: Mapping[str, spaces.Space],
        state_space: spaces.Space | None = None,
        teams: Mapping[str, Sequence[str]] | None = None,
    ):
        if capacity < 1:
            raise ValueError(f"a replay buffer needs a capacity of at least 1 row, got {capacity}")
        self.capacity = int(capacity)
        self.agents = list(agents)
        self.teams = {name: list(members) for name, members in (teams or {"all": self.agents}).items()}
        for name, members in self.teams.items():
            if missing := [a for a in members if a not in self.agents]:
                raise ValueError(f"team {name!r} names seats {missing} that the learner does not hold: {self.agents}")
        self._team_columns = {name: [self.agents.index(a) for a in m] for name, m in self.teams.items()}
        self.observation_spaces = {a: observation_spaces[a] for a in self.agents}
        self.action_spaces = {a: action_spaces[a] for a in self.agents}
        self.state_space = state_space
        self.obs_dims = {a: _box_features(observation_spaces[a], f"{a}'s observation") for a in self.agents}
        self._lowest = {a: _lowest_action(action_spaces[a], a) for a in self.agents}
        c, n = self.capacity, len(self.agents)
        self._arrays: dict[str, np.ndarray] = {}
        for a in self.agents:
            self._arrays[f"obs/{a}"] = np.zeros((c, self.obs_dims[a]), np.float32)
            self._arrays[f"next_obs/{a}"] = np.zeros((c, self.obs_dims[a]), np.float32)
            low = self._lowest[a]
            self._arrays[f"actions/{a}"] = np.zeros((c, *low.shape), low.dtype)
        self._arrays["rewards"] = np.zeros((c, n), np.float32)
        for name in _FLAGS:
            self._arrays[name] = np.zeros((c, n), bool)
        self._arrays["episode_over"] = np.zeros(c, bool)
        self.state_dim = None if state_space is None else _box_features(state_space, "the global state")
        if self.state_dim is not None:
            self._arrays["state"] = np.zeros((c, self.state_dim), np.float32)
            self._arrays["next_state"] = np.zeros((c, self.state_dim), np.float32)
        self.cursor = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, before: BatchResult, actions: Mapping[str, Any] | np.ndarray, after: BatchResult) -> int:
        """Store one batched step of K worlds: the reply the actions were chosen from, the actions, and the step's
        reply. Returns the number of rows stored (K less the worlds in which no held seat acted).

        Args:
            before: the reset's or previous step's result (its ``obs``, ``alive`` and, where granted, ``state``).
            actions: ``{agent: (K, ...)}`` as sent with the step, or ``(K, N, ...)`` (layout "stacked").
            after: the step's result.

        Raises:
            ValueError: the buffer keeps the state but ``before`` or ``after`` has none.
        """
        acted = np.asarray(before.alive, bool)
        rows = np.flatnonzero(acted.any(axis=1))
        if len(rows) == 0:
            return 0
        over = np.asarray(after.episode_over, bool)
        obs, new, final = self._by_agent(before.obs), self._by_agent(after.obs), self._by_agent(after.final_obs)
        actions = self._by_agent(actions)
        terminated, truncated = np.asarray(after.terminated, bool), np.asarray(after.truncated, bool)
        # A seat cut short while its world goes on has no final observation on the wire: it keeps the one it acted on.
        cut = truncated & ~terminated & ~over[:, None]
        slots = (self.cursor + np.arange(len(rows))) % self.capacity
        arrays = self._arrays
        for i, a in enumerate(self.agents):
            x = _flat(obs[a])
            x_next = _flat(new[a]).copy()
            if final is not None and over.any():
                x_next[over] = _flat(final[a])[over]
            x_next[cut[:, i]] = x[cut[:, i]]
            arrays[f"obs/{a}"][slots] = x[rows]
            arrays[f"next_obs/{a}"][slots] = x_next[rows]
            chosen = np.asarray(actions[a]).reshape(len(acted), *self._lowest[a].shape).copy()
            chosen[~acted[:, i]] = self._lowest[a]  # a dead seat's row holds whatever filled it: store the no-op
            arrays[f"actions/{a}"][slots] = chosen[rows]
        arrays["rewards"][slots] = np.asarray(after.rewards, np.float32)[rows]
        arrays["alive"][slots] = acted[rows]
        arrays["terminated"][slots] = terminated[rows]
        arrays["truncated"][slots] = truncated[rows]
        arrays["episode_over"][slots] = over[rows]
        if self.state_dim is not None:
            if before.state is None or after.state is None:
                raise ValueError("this replay buffer keeps the global state: open the worlds with state=True")
            state_next = _flat(after.state).copy()
            if over.any():
                state_next[over] = _flat(after.final_state)[over]
            arrays["state"][slots] = _flat(before.state)[rows]
            arrays["next_state"][slots] = state_next[rows]
        self.cursor = int((self.cursor + len(rows)) % self.capacity)
        self.size = min(self.size + len(rows), self.capacity)
        return len(rows)

    def sample(self, n: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> JointBatch:
        """``n`` rows drawn uniformly with replacement with ``rng``, as tensors on ``device``.

        Raises:
            ValueError: the buffer is empty.
        """
        if self.size == 0:
            raise ValueError("cannot sample an empty replay buffer: add transitions first")
        return self.rows(rng.integers(0, self.size, n), device)

    def rows(self, index: np.ndarray, device: torch.device | str = "cpu") -> JointBatch:
        """The rows at ``index`` (slot numbers below :attr:`size`), as tensors on ``device``."""
        arrays = self._arrays

        def take(key: str) -> torch.Tensor:
            return torch.from_numpy(arrays[key][index]).to(device)

        rewards = take("rewards")
        has_state = self.state_dim is not None
        return JointBatch(
            agents=list(self.agents),
            obs={a: take(f"obs/{a}") for a in self.agents},
            actions={a: take(f"actions/{a}") for a in self.agents},
            next_obs={a: take(f"next_obs/{a}") for a in self.agents},
            rewards=rewards,
            team_rewards={name: rewards[:, cols].sum(1) for name, cols in self._team_columns.items()},
            alive=take("alive"),
            terminated=take("terminated"),
            truncated=take("truncated"),
            episode_over=take("episode_over"),
            state=take("state") if has_state else None,
            next_state=take("next_state") if has_state else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, the cursor and the size, as tensors and ints (for a checkpoint)."""
        filled = {key: torch.from_numpy(array[: self.size].copy()) for key, array in self._arrays.items()}
        return {"arrays": filled, "cursor": self.cursor, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            ValueError: the saved buffer has another capacity or other fields (other seats, spaces or state).
        """
        saved = state["arrays"]
        if int(state["capacity"]) != self.capacity or set(saved) != set(self._arrays):
            raise ValueError(
                f"the checkpoint's replay buffer (capacity {state['capacity']}, fields {sorted(saved)}) does not fit "
                f"this one (capacity {self.capacity}, fields {sorted(self._arrays)}): resume with the run's settings"
            )
        size = int(state["size"])
        for key, array in self._arrays.items():
            array[:] = 0
            array[:size] = saved[key].numpy()
        self.cursor, self.size = int(state["cursor"]), size

    def _by_agent(self, value: Any) -> dict[str, np.ndarray] | None:
        """Per-agent arrays from layout "agents" (a dict) or "stacked" (an agent axis after the rows)."""
        if value is None or isinstance(value, Mapping):
            return value
        value = np.asarray(value)
        return {a: value[:, i] for i, a in enumerate(self.agents)}


def _flat(value: Any) -> np.ndarray:
    value = np.asarray(value, np.float32)
    return value.reshape(len(value), -1)


def _box_features(space: spaces.Space, what: str) -> int:
    if not isinstance(space, spaces.Box):
        raise ValueError(f"{what} space {space} is not a Box; the replay buffer stores Box observations and states")
    return int(np.prod(space.shape, dtype=np.int64))


def _lowest_action(space: spaces.Space, agent: str) -> np.ndarray:
    """The value a dead seat's row stores: the lowest action (the protocol's no-op for Discrete), zeros for Box."""
    if isinstance(space, spaces.Discrete):
        return np.asarray(int(space.start), np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return np.asarray(space.start, np.int64).reshape(space.shape)
    if isinstance(space, spaces.Box):
        return np.clip(np.zeros(space.shape, np.float32), space.low, space.high).astype(np.float32)
    raise ValueError(f"{agent}'s action space {space} cannot be stored: use Discrete, MultiDiscrete or Box")
