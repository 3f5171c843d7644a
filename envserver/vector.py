"""Worlds backed by one vectorised scenario: K copies stepped by a single numpy call per batch.

When a client creates ``copies >= 2`` worlds with ``join: true`` of a scenario that has a vectorised form
(scenarios/vector.py), the server builds one :class:`VectorBlock` instead of K ParallelEnvs. Each copy is still a
world with an id (list, observe, state and close work), but it only steps together with its block: a
``step_batch`` or ``reset_batch`` over exactly the block's worlds, in order. That is the learners' path, and it
runs with no per-world Python work at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from agora_marl.envserver.batch import BatchStepper, batch_reply
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_REQUEST, LAYOUT_STACKED
from agora_marl.envserver.protocol.wire import Packed, Stacked
from agora_marl.envserver.world import RECENT_RETURNS
from agora_marl.scenarios import VectorScenario


class VectorBlock:
    """K worlds sharing one vectorised scenario (a *vector block*; a *group* is only ever ``create``'s named group
    of worlds, groups.py); the last observations and step counters of every copy."""

    def __init__(self, vector: Any):
        self.vector = vector
        self.agents = list(vector.possible_agents)
        self.worlds: list = []
        self.world_ids: list[int] = []
        self.intact = True  # False once any of its worlds is closed: the block no longer steps
        self.holders_dirty = True  # set by a copy whose seats change
        self._holder: bytes | None = None
        self.last_obs: dict[str, np.ndarray] = {}
        self.ticks = np.zeros(vector.num_copies, np.int64)
        self.episodes = np.zeros(vector.num_copies, np.int64)
        # What ``list`` shows, kept with a few vector ops per batch: returns so far, the last RECENT_RETURNS
        # finished ones per copy (a ring), the last rewards, steps since creation.
        self.steps = 0
        self.returns = np.zeros(vector.num_copies, np.float64)
        self.recent = np.zeros((vector.num_copies, RECENT_RETURNS), np.float64)
        self.finished = np.zeros(vector.num_copies, np.int64)
        self.last_rewards: np.ndarray | None = None
        self.rate_mark: tuple[float, int] = (0.0, 0)
        self.renders = type(vector).render is not VectorScenario.render
        self._steppers: dict[tuple[str, bool], VectorStepper] = {}

    def stepper(self, layout: str, with_state: bool) -> VectorStepper:
        """The stepper of this block for a layout (made once: its checks and buffers do not change with the batch)."""
        stepper = self._steppers.get((layout, with_state))
        if stepper is None:
            stepper = self._steppers[layout, with_state] = VectorStepper(self, layout, with_state)
        return stepper

    def sole_holder(self) -> bytes | None:
        """The connection holding every seat of every copy, if one does (cached by each world)."""
        holders = {w.sole_holder() for w in self.worlds} if self.holders_dirty else {self._holder}
        self._holder, self.holders_dirty = (holders.pop() if len(holders) == 1 else None), False
        return self._holder

    def record(self, rewards: np.ndarray, done: np.ndarray) -> None:
        """Account one batch step's rewards (K, agents) and the copies whose episode ended (indices) for ``stats``."""
        self.steps += 1
        self.last_rewards = rewards
        self.returns += rewards.sum(axis=1)
        if done.size:
            self.recent[done, self.finished[done] % RECENT_RETURNS] = self.returns[done]
            self.finished[done] += 1
            self.returns[done] = 0.0

    def stats(self, index: int, now: float) -> dict:
        """Copy ``index``'s part of ``list`` (see :meth:`World.stats`)."""
        since, steps = self.rate_mark
        rate = (self.steps - steps) / (now - since) if since and now > since else 0.0
        if now - since >= 1.0:
            self.rate_mark = (now, self.steps)
        n = int(min(self.finished[index], RECENT_RETURNS))
        order = (np.arange(n) + self.finished[index] - n) % RECENT_RETURNS
        rewards = (
            {} if self.last_rewards is None else dict(zip(self.agents, self.last_rewards[index].tolist(), strict=True))
        )
        return {
            "steps_per_s": round(rate, 2),
            "late": 0,
            "returns": [round(r, 4) for r in self.recent[index, order].tolist()],
            "rewards": rewards,
        }

    def render(self, index: int) -> np.ndarray:
        return self.vector.render(index)

    def add(self, world: Any) -> None:
        self.worlds.append(world)
        self.world_ids.append(world.world_id)

    def refuse_single(self, world_id: int) -> ProtocolError:
        return ProtocolError(
            BAD_REQUEST,
            f"world {world_id} is one copy of a vectorised batch and steps only with its block",
            f"use step_batch/reset_batch over worlds {self.world_ids} in that order",
        )


class CopyObs(Mapping):
    """Copy ``index``'s row of the block's last observations, read on demand (nothing is copied per step)."""

    def __init__(self, block: VectorBlock, index: int):
        self.block, self.index = block, index

    def __getitem__(self, agent: str) -> np.ndarray:
        return self.block.last_obs[agent][self.index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.block.last_obs)

    def __len__(self) -> int:
        return len(self.block.last_obs)


class CopyView(ParallelEnv):
    """Copy ``index`` of a block seen as a ParallelEnv for reading: spaces, live agents, state. It never steps."""

    def __init__(self, block: VectorBlock, index: int):
        self.block, self.index = block, index
        self.possible_agents = list(block.agents)
        self.agents = list(block.agents)  # in vector form every agent lives until its copy's episode ends
        if block.vector.state_space is not None:
            self.state_space = block.vector.state_space

    def observation_space(self, agent: str):
        return self.block.vector.observation_spaces[agent]

    def action_space(self, agent: str):
        return self.block.vector.action_spaces[agent]

    def state(self) -> np.ndarray:
        return self.block.vector.state()[self.index]

    def reset(self, seed=None, options=None):
        raise self.block.refuse_single(self.block.world_ids[self.index])

    def step(self, actions):
        raise self.block.refuse_single(self.block.world_ids[self.index])

    def close(self) -> None:
        pass


class VectorStepper(BatchStepper):
    """Steps a whole block with one call of the vectorised scenario; same replies as :class:`BatchStepper`."""

    def __init__(self, block: VectorBlock, layout: str, with_state: bool):
        super().__init__(block.worlds, layout, with_state)
        self.block = block
        # Every agent of every copy is alive after a vector step: one read-only array serves every reply.
        self.alive = np.ones((len(self.worlds), len(self.agents)), bool)
        self.alive.flags.writeable = False
        self.world_ids = Packed(block.world_ids)  # the block is whole once it steps: its ids never change

    def _layout(self, obs: dict[str, np.ndarray], whole: bool = False) -> Any:
        """The reply's observations; stacked, they are written when packed (straight into a joined frame, no array of
        their own in between) unless ``whole``: made now, for arrays the scenario may write again before the send."""
        if self.layout == LAYOUT_STACKED:
            stacked = Stacked([obs[a] for a in self.agents])
            return stacked.array() if whole else stacked
        return obs

    def reset(self, seed: int | None) -> dict:
        block = self.block
        block.last_obs = block.vector.reset(seed=seed)
        block.ticks[:] = 0
        block.episodes += 1
        state = self._state(block.last_obs) if self.with_state else None
        return batch_reply(self.world_ids, self._layout(block.last_obs), self.alive, state=state)

    def _state(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The state the worlds' spec advertises: the scenario's ``state()``, else the copies' observations
        concatenated (as :meth:`World.state` gives for one copy). A spec with neither was refused before stepping."""
        vector = self.block.vector
        if vector.state_space is not None:
            return vector.state()
        k = len(self.worlds)
        parts = [np.asarray(obs[a]).reshape(k, -1) for a in self.agents]
        return np.concatenate(parts, axis=1).astype(self.template.state_space.dtype, copy=False)

    def step(self, actions: dict[str, Any]) -> dict:
        block = self.block
        obs, rewards, terminated, truncated = block.vector.step(actions)
        over = (terminated | truncated).any(axis=1)
        done = np.flatnonzero(over)
        block.ticks += 1
        block.record(rewards, done)
        final_obs = final_state = None
        if done.size:
            final_obs = self._layout(obs, whole=True)  # the resets below may write obs's arrays in place
            if self.with_state:
                final_state = self._state(obs)
            obs = block.vector.reset(copies=done)
            block.ticks[done] = 0
            block.episodes[done] += 1
        block.last_obs = obs
        return batch_reply(
            self.world_ids,
            self._layout(obs),
            self.alive,
            rewards=np.asarray(rewards, np.float32),
            terminated=np.asarray(terminated, bool),
            truncated=np.asarray(truncated, bool),
            episode_over=over,
            final_obs=final_obs,
            state=self._state(obs) if self.with_state else None,
            final_state=final_state,
        )
