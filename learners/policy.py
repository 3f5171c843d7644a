"""Agent teams and the acting multi-agent policy of actor networks (a building block of the learners).

Agents are formed into teams (:func:`form_teams`); a team shares one actor network (:class:`TeamActor`), whose
input is the flattened observation followed, optionally, by a one-hot of the agent's index in its team.
:class:`MultiAgentPolicy` holds every team's actor and acts for any subset of the agents: it is an
``api.Policy`` (``possible_agents``, spaces, ``act(obs, greedy)``), as PPO's ``make_policy`` returns it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from agora_marl.learners.networks import Actor, flat_dim

SHARE_MODES = ("team", "none")


def team_prefix(agent: str) -> str:
    """The team part of an agent name: ``adversary_0`` -> ``adversary``; a name without a numeric suffix is its own."""
    match = re.fullmatch(r"(.*?)_?\d+", agent)
    return match.group(1) if match and match.group(1) else agent


def form_teams(
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
    """One team's actor and how its inputs are laid out: observation features, then the agent-id one-hot.

    Args:
        agents: the team's agents, in order (an agent's index is its one-hot's position).
        observation_space, action_space: every member's (a team shares them).
        agent_id: append the one-hot of the agent's index to the input (only where the team has several agents).
        hidden, activation, input_norm: the trunk (learners.networks.mlp).
        box_bounds, log_std_init: Box actions' head (learners.networks.GaussianHead).
    """

    def __init__(
        self,
        agents: list[str],
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *,
        agent_id: bool = True,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        input_norm: bool = False,
        box_bounds: str = "clip",
        log_std_init: float = 0.0,
    ):
        super().__init__()
        self.agents = list(agents)
        self.obs_dim = flat_dim(observation_space)
        self.id_dim = len(agents) if agent_id and len(agents) > 1 else 0
        self.in_dim = self.obs_dim + self.id_dim
        self.actor = Actor(self.in_dim, action_space, hidden, activation, input_norm, box_bounds, log_std_init)

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
        possible_agents: the agents it acts for.
        observation_spaces, action_spaces: theirs (others are ignored).
        share: ``team`` or ``none`` (:func:`form_teams`).
        actor: :class:`TeamActor`'s keyword arguments (agent_id, hidden, activation, input_norm, box_bounds,
            log_std_init).
    """

    def __init__(
        self,
        possible_agents: list[str],
        observation_spaces: dict[str, spaces.Space],
        action_spaces: dict[str, spaces.Space],
        *,
        share: str = "team",
        **actor: Any,
    ):
        super().__init__()
        self.possible_agents = list(possible_agents)
        self.observation_spaces = {a: observation_spaces[a] for a in self.possible_agents}
        self.action_spaces = {a: action_spaces[a] for a in self.possible_agents}
        formed = form_teams(self.possible_agents, self.observation_spaces, self.action_spaces, share)
        self.teams = nn.ModuleDict(
            {
                name: TeamActor(agents, observation_spaces[agents[0]], action_spaces[agents[0]], **actor)
                for name, agents in formed
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
