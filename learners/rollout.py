"""Rollout storage for one team, the team while training an actor-critic (PPO's), and generalized advantage
estimation that tells termination from truncation (building blocks of the learners).

Shapes: T steps × K worlds × n agents of the team. Inputs are stored as the networks will read them (observation
features followed by the agent-id one-hot, which is written once), so that a step's actor input is a view of the
buffer, and the update reads minibatches straight out of it.

Episode ends, per agent and step ``t``:

- ``terminated[t]``: the agent's episode ended in a terminal state; nothing is bootstrapped.
- ``ended[t]``: its episode ended for any reason (terminated, truncated, or the world's episode is over); advantages
  do not flow back across it.
- a truncated end bootstraps from the value of the observation the episode ended in: the world's ``final_obs`` /
  ``final_state``, recorded with :meth:`TeamRollout.add_final`. An agent truncated while its world goes on has no
  final observation on the wire (``cut_short[t]``); it bootstraps from the value of its observation at ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agora_marl.learners.networks import Critic, RunningNorm

if TYPE_CHECKING:
    from agora_marl.agents.batched import BatchResult
    from agora_marl.learners.policy import TeamActor


class TeamRollout:
    """One rollout of one team.

    Args:
        steps, worlds, agents: T, K, n.
        actor_dim: width of an actor input row (observation features + id one-hot).
        critic_dim: width of a critic input row; ``None`` when the critic reads the actor's inputs (IPPO).
        id_dim: width of the agent-id one-hot at the end of each input row (0: none).
        action_shape, action_dtype: one stored action.
    """

    def __init__(
        self,
        steps: int,
        worlds: int,
        agents: int,
        actor_dim: int,
        critic_dim: int | None,
        id_dim: int,
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
    ):
        self.steps, self.worlds, self.agents = steps, worlds, agents
        # T + 1 rows of inputs: the last one is where the next rollout starts, and what it bootstraps from.
        self.actor_in = np.zeros((steps + 1, worlds, agents, actor_dim), np.float32)
        self.critic_in = (
            self.actor_in if critic_dim is None else np.zeros((steps + 1, worlds, agents, critic_dim), np.float32)
        )
        if id_dim:
            eye = np.eye(agents, dtype=np.float32)
            self.actor_in[..., -id_dim:] = eye
            if critic_dim is not None:
                self.critic_in[..., -id_dim:] = eye
        self.actions = torch.zeros((steps, worlds, agents, *action_shape), dtype=action_dtype)
        self.log_probs = torch.zeros((steps, worlds, agents))
        self.rewards = np.zeros((steps, worlds, agents), np.float32)
        self.terminated = np.zeros((steps, worlds, agents), bool)
        self.ended = np.zeros((steps, worlds, agents), bool)
        self.active = np.zeros((steps, worlds, agents), bool)
        self.cut_short = np.zeros((steps, worlds, agents), bool)
        self.finals: list[tuple[int, np.ndarray, np.ndarray]] = []

    def add_final(self, t: int, world_rows: np.ndarray, critic_inputs: np.ndarray) -> None:
        """Critic inputs of the last observation of episodes that ended at step ``t`` in ``world_rows``."""
        self.finals.append((t, world_rows, critic_inputs))

    def roll_over(self) -> None:
        """Make the last input row the first of the next rollout and forget the ended episodes' final inputs."""
        self.actor_in[0] = self.actor_in[-1]
        if self.critic_in is not self.actor_in:
            self.critic_in[0] = self.critic_in[-1]
        self.finals.clear()

    @torch.no_grad()
    def values(self, critic: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's raw outputs on every stored input, in one forward pass.

        Returns ``(values, next_values)``, both (T, K, n): ``values[t]`` of the input at t, ``next_values[t]`` of
        the input the step led to within the same episode (the final observation where the episode ended).
        """
        T, K, n = self.steps, self.worlds, self.agents
        inputs = [torch.from_numpy(self.critic_in).reshape(-1, self.critic_in.shape[-1])]
        inputs += [torch.from_numpy(x).reshape(-1, x.shape[-1]) for _, _, x in self.finals]
        out = critic(torch.cat(inputs).to(device)).cpu()
        all_values = out[: (T + 1) * K * n].reshape(T + 1, K, n)
        next_values = all_values[1:].clone()
        cut_short = torch.from_numpy(self.cut_short)
        next_values[cut_short] = all_values[:-1][cut_short]
        offset = (T + 1) * K * n
        for t, rows, x in self.finals:
            count = x.shape[0] * x.shape[1]
            next_values[t, torch.from_numpy(rows)] = out[offset : offset + count].reshape(x.shape[0], x.shape[1])
            offset += count
        return all_values[:-1], next_values


class Team:
    """One team while training an actor-critic: its columns in the batch, actor, critic, value normaliser and
    rollout storage.

    Args:
        name, actor: the team's name and actor (learners.policy.TeamActor).
        columns: the team's agents' columns in the worlds' batch.
        critic_dim: the width of a centralized critic's input; None: the critic reads the actor's inputs.
        num_worlds, steps: K and T of the rollout storage.
        hidden, activation, input_norm: the critic's trunk (learners.networks.mlp).
        value_norm: learn values of normalised returns (a :class:`~agora_marl.learners.networks.RunningNorm`).
        critic_obs: a centralized critic also reads the agent's own observation after the state.
    """

    def __init__(
        self,
        name: str,
        actor: TeamActor,
        columns: list[int],
        critic_dim: int | None,
        num_worlds: int,
        steps: int,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        input_norm: bool = False,
        value_norm: bool = True,
        critic_obs: bool = False,
    ):
        self.name, self.actor, self.agents = name, actor, actor.agents
        self.columns = np.asarray(columns)
        contiguous = columns == list(range(columns[0], columns[0] + len(columns)))
        self.cols = slice(columns[0], columns[-1] + 1) if contiguous else self.columns
        self.critic = Critic(critic_dim or actor.in_dim, hidden, activation, input_norm)
        self.norm = RunningNorm() if value_norm else None
        self.centralized, self.critic_obs = critic_dim is not None, critic_obs
        self.buf = TeamRollout(
            steps,
            num_worlds,
            len(columns),
            actor.in_dim,
            critic_dim,
            actor.id_dim,
            actor.head.action_shape,
            actor.head.action_dtype,
        )

    def team_obs(self, obs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """This team's observations (K, n, features) out of a stacked array or a per-agent dict."""
        if isinstance(obs, dict):
            return np.stack([obs[a].reshape(len(obs[a]), -1) for a in self.agents], 1)
        part = obs[:, self.cols]
        return part.reshape(part.shape[0], part.shape[1], -1)

    def write_inputs(self, actor_in: np.ndarray | None, critic_in: np.ndarray, obs: Any, state: Any) -> None:
        """Fill input rows (K, n, dim) from a step's observations and, for a centralized critic, global states.

        ``actor_in`` None: write the critic's inputs only. Without a centralized critic they are the actor's.
        """
        own = self.team_obs(obs)
        if actor_in is not None:
            actor_in[..., : own.shape[-1]] = own
        if not self.centralized:
            critic_in[..., : own.shape[-1]] = own
            return
        width = state.shape[-1]
        critic_in[..., :width] = state.reshape(len(state), 1, -1)
        if self.critic_obs:
            critic_in[..., width : width + own.shape[-1]] = own

    def start(self, obs: Any, state: Any) -> None:
        """Write the first inputs of a rollout from freshly reset worlds."""
        self.write_inputs(self.buf.actor_in[0], self.buf.critic_in[0], obs, state)

    def record(self, t: int, rows: slice, alive: np.ndarray, result: BatchResult) -> None:
        """Store step ``t`` of worlds ``rows`` (``result`` holds those rows only): who acted (``alive`` before it),
        rewards, episode ends, the next inputs, and the critic inputs of the final observations of the episodes that
        ended."""
        buf, cols, over = self.buf, self.columns, result.episode_over
        buf.active[t, rows] = alive[:, cols]
        buf.rewards[t, rows] = result.rewards[:, cols]
        terminated = buf.terminated[t, rows] = result.terminated[:, cols]
        truncated = result.truncated[:, cols]
        buf.ended[t, rows] = terminated | truncated | over[:, None]
        buf.cut_short[t, rows] = truncated & ~terminated & ~over[:, None]
        self.write_inputs(buf.actor_in[t + 1, rows], buf.critic_in[t + 1, rows], result.obs, result.state)
        ended = np.flatnonzero(over)
        if len(ended):
            final_obs = result.final_obs
            final_obs = {a: v[ended] for a, v in final_obs.items()} if isinstance(final_obs, dict) else final_obs[ended]
            final_state = result.final_state[ended] if self.centralized else None
            inputs = np.repeat(buf.critic_in[0, :1], len(ended), axis=0)  # keeps the agent-id columns
            self.write_inputs(None, inputs, final_obs, final_state)
            buf.add_final(t, rows.start + ended, inputs)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    ended: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalized advantage estimates, all tensors (T, ...).

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t`` and
    ``A_t = delta_t + gamma * lam * (1 - ended_t) * A_{t+1}``, with ``A_T = 0``: rewards after an episode end never
    leak into it, a terminal state is worth zero, and a truncated one is worth its critic's value.
    """
    not_terminal = 1.0 - terminated.float()
    carry = 1.0 - ended.float()
    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * carry[t] * running
        advantages[t] = running
    return advantages
