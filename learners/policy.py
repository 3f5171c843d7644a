"""The acting half of a trained multi-agent policy: agent teams, their actors, and loading one from a run directory.

Agents are grouped into teams (:func:`group_agents`); a team shares one actor network, whose input is the
flattened observation followed, optionally, by a one-hot of the agent's index in its team. This module is all that
evaluation and ``agora play --policy RUN_DIR`` need: :func:`load_run_policy` rebuilds the actors from a checkpoint
alone (the world's spaces are stored in it), and :func:`evaluate` plays them through a server.

Algorithms provide ``policy_from_checkpoint(config, state)`` in their module (see learners.config), returning an
object with ``possible_agents``, ``observation_spaces``, ``action_spaces``, ``eval()`` and
``act(obs, greedy) -> actions`` over dicts of per-agent arrays, as :class:`MultiAgentPolicy` does.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.learners.config import Config, algorithm_module, load_config
from agora_marl.learners.networks import Actor, flat_dim
from agora_marl.learners.run import CONFIG_FILE, Run, load_checkpoint

SHARE_MODES = ("team", "none")


def team_prefix(agent: str) -> str:
    """The team part of an agent name: ``adversary_0`` -> ``adversary``; a name without a numeric suffix is its own."""
    match = re.fullmatch(r"(.*?)_?\d+", agent)
    return match.group(1) if match and match.group(1) else agent


def group_agents(
    possible_agents: list[str],
    observation_spaces: dict[str, spaces.Space],
    action_spaces: dict[str, spaces.Space],
    share: str = "team",
) -> list[tuple[str, list[str]]]:
    """Teams as ``(name, agents)`` in order of first appearance.

    ``share="team"``: agents with the same name prefix and the same observation and action spaces form a team
    (``adversary_*`` and ``agent_*`` in simple_tag); ``"none"``: every agent is its own team.
    """
    if share not in SHARE_MODES:
        raise ValueError(f"share {share!r} is not one of {SHARE_MODES}")
    teams: dict[Any, tuple[str, list[str]]] = {}
    for agent in possible_agents:
        if share == "none":
            key = agent
        else:
            key = (team_prefix(agent), repr(observation_spaces[agent]), repr(action_spaces[agent]))
        if key not in teams:
            name = agent if share == "none" else team_prefix(agent)
            taken = {n for n, _ in teams.values()}
            teams[key] = (name if name not in taken else f"{name}{len(teams)}", [])
        teams[key][1].append(agent)
    return list(teams.values())


class TeamActor(nn.Module):
    """One team's actor and how its inputs are laid out: observation features, then the agent-id one-hot."""

    def __init__(self, agents: list[str], observation_space: spaces.Space, action_space: spaces.Space, settings: Any):
        super().__init__()
        self.agents = list(agents)
        self.obs_dim = flat_dim(observation_space)
        self.id_dim = len(agents) if settings.agent_id and len(agents) > 1 else 0
        self.in_dim = self.obs_dim + self.id_dim
        self.actor = Actor(
            self.in_dim,
            action_space,
            settings.hidden,
            settings.activation,
            settings.input_norm,
            settings.box_bounds,
            settings.log_std_init,
        )

    @property
    def head(self):
        return self.actor.head

    def inputs(self, obs: list[np.ndarray], indices: list[int]) -> torch.Tensor:
        """Actor inputs (B, m, in_dim) for observations (B, *shape) of the team's agents at ``indices``."""
        batch = obs[0].shape[0]
        x = np.zeros((batch, len(obs), self.in_dim), np.float32)
        for j, (o, index) in enumerate(zip(obs, indices, strict=True)):
            x[:, j, : self.obs_dim] = o.reshape(batch, -1)
            if self.id_dim:
                x[:, j, self.obs_dim + index] = 1.0
        return torch.from_numpy(x)


class MultiAgentPolicy(nn.Module):
    """Every team's actor; acts for any subset of the agents.

    Args:
        possible_agents, observation_spaces, action_spaces: the world's spec.
        settings: the algorithm settings that shaped the actors (share, agent_id, hidden, activation,
            input_norm, box_bounds, log_std_init).
    """

    def __init__(
        self,
        possible_agents: list[str],
        observation_spaces: dict[str, spaces.Space],
        action_spaces: dict[str, spaces.Space],
        settings: Any,
    ):
        super().__init__()
        self.possible_agents = list(possible_agents)
        self.observation_spaces = dict(observation_spaces)
        self.action_spaces = dict(action_spaces)
        groups = group_agents(self.possible_agents, observation_spaces, action_spaces, settings.share)
        self.teams = nn.ModuleDict(
            {
                name: TeamActor(agents, observation_spaces[agents[0]], action_spaces[agents[0]], settings)
                for name, agents in groups
            }
        )
        self.team_of = {agent: (name, i) for name, team in self.teams.items() for i, agent in enumerate(team.agents)}

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], greedy: bool = True) -> dict[str, np.ndarray]:
        """Actions ``{agent: (B, *action_shape)}`` for observations ``{agent: (B, *obs_shape)}`` of any agents."""
        actions: dict[str, np.ndarray] = {}
        device = next(self.parameters()).device
        for team in self.teams.values():
            present = [a for a in team.agents if a in obs]
            if not present:
                continue
            x = team.inputs([np.asarray(obs[a]) for a in present], [self.team_of[a][1] for a in present]).to(device)
            batch = x.shape[0]
            params = team.actor(x.reshape(batch * len(present), -1))
            raw = team.head.mode(params) if greedy else team.head.sample(params)[0]
            values = team.head.to_env(raw)
            values = values.reshape(batch, len(present), *values.shape[1:])
            for j, agent in enumerate(present):
                actions[agent] = values[:, j]
        return actions


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Config, dict[str, Any]]:
    """A run's config and the state of ``checkpoint`` (default: its latest)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    if checkpoint is None:
        found = Run(run_dir, config, writer=False).checkpoints()
        if not found:
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/update_*.pt)")
        checkpoint = found[-1]
    return config, load_checkpoint(checkpoint)


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None) -> Any:
    """The trained multi-agent policy of a run (its algorithm's ``policy_from_checkpoint``), on the CPU, in eval
    mode."""
    config, state = load_run(run_dir, checkpoint)
    policy = algorithm_module(config.algo).policy_from_checkpoint(config, state)
    policy.eval()
    return policy


def load_run_policy(
    run_dir: str | Path,
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
    agent: str | None = None,
    greedy: bool = True,
    checkpoint: str | Path | None = None,
) -> Callable[[Any], Any]:
    """One seat's policy ``obs -> action`` from a trained run (for ``agora play --policy RUN_DIR``).

    Args:
        run_dir: the run directory.
        observation_space, action_space: the seat's spaces; checked against the trained agent's.
        agent: the seat's agent name. Without it, the first trained agent with these spaces plays (with an agent-id
            input, that is the team's first member's behaviour).
        greedy: act on the mode of the distribution (True) or sample it.
        checkpoint: a checkpoint file (default: the run's latest).
    """
    policy = load_trained_policy(run_dir, checkpoint)
    if agent is None:
        candidates = [
            a
            for a in policy.possible_agents
            if (observation_space is None or policy.observation_spaces[a] == observation_space)
            and (action_space is None or policy.action_spaces[a] == action_space)
        ]
        if not candidates:
            raise ValueError(
                f"no agent trained in {run_dir} has observation space {observation_space} and action space {action_space}"
            )
        agent = candidates[0]
    if agent not in policy.possible_agents:
        raise ValueError(f"{run_dir} trained agents {policy.possible_agents}, not {agent!r}")
    for given, trained, what in (
        (observation_space, policy.observation_spaces[agent], "observation"),
        (action_space, policy.action_spaces[agent], "action"),
    ):
        if given is not None and given != trained:
            raise ValueError(f"the seat's {what} space {given} differs from the trained agent {agent!r}'s {trained}")
    return lambda obs: policy.act({agent: np.asarray(obs)[None]}, greedy)[agent][0]


def evaluate(
    policy: Any,
    addresses: list[str],
    scenario: str,
    config: dict,
    episodes: int,
    seed: int = 1_000_000,
    max_worlds: int = 128,
    greedy: bool = True,
    timeout_s: float = 600.0,
) -> np.ndarray:
    """Team returns (sum over all agents) of ``episodes`` episodes played by ``policy`` through the servers.

    Worlds run in parallel; each contributes its first episodes in turn, so that short episodes are not favoured.
    """
    num_worlds = min(episodes, max_worlds)
    quota = math.ceil(episodes / num_worlds)
    returns: list[list[float]] = [[] for _ in range(num_worlds)]
    deadline = time.monotonic() + timeout_s
    with BatchedWorlds(addresses, scenario, config, num_worlds=num_worlds, seed=seed, layout="agents") as worlds:
        result = worlds.reset(seed=seed)
        running = np.zeros(num_worlds)
        while min(len(r) for r in returns) < quota:
            if time.monotonic() > deadline:
                raise TimeoutError(f"evaluation did not finish {episodes} episodes in {timeout_s} s")
            result = worlds.step(policy.act(result.obs, greedy))
            running += result.rewards.sum(axis=1)
            for k in np.flatnonzero(result.episode_over):
                if len(returns[k]) < quota:
                    returns[k].append(float(running[k]))
                running[k] = 0.0
    ordered = [r[i] for i in range(quota) for r in returns]
    return np.asarray(ordered[:episodes])
