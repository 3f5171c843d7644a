"""The two sides of a match between a trained run and an opponent, for ``agora eval --opponent`` and ``agora record``.

A run plays the seats it trained (``env.seats``; its checkpoint keeps them as ``seats``), or, when it trained every
seat, the side that ``--seats GLOB`` names. The opponent plays the other seats: ``random``, ``noop``, ``scripted``,
``MODULE:CALLABLE`` (agents/policies.py) or another run directory, which must have trained them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_marl.agents.batched import resolve_seats
from agora_marl.agents.match import SeatPolicies
from agora_marl.agents.policies import random_policy
from agora_marl.envserver.protocol import WorldSpec
from agora_marl.launch.policies import seat_policy
from agora_marl.learners.config import Config
from agora_marl.learners.trained import load_run, load_trained_policy


@dataclass
class TrainedRun:
    """A run directory's config, the world it trained in and the seats it trained."""

    directory: Path
    config: Config
    spec: WorldSpec
    trained: list[str]
    """The seats its policy plays (every agent of the world unless it trained with ``env.seats``)."""
    checkpoint: str | None = None
    """The checkpoint file its policy comes from (None: its latest)."""

    @property
    def partial(self) -> bool:
        """It trained some seats of its worlds, not all."""
        return self.trained != list(self.spec.possible_agents)


def trained_run(run_dir: str | Path, checkpoint: str | None = None) -> TrainedRun:
    """The run at ``run_dir`` (its ``checkpoint``, default the latest): what it trained, read from the checkpoint."""
    config, state = load_run(run_dir, checkpoint)
    spec = WorldSpec.from_wire(state["spec"])
    return TrainedRun(Path(run_dir), config, spec, list(state.get("seats") or spec.possible_agents), checkpoint)


def run_side(run: TrainedRun, seats: str | None) -> list[str]:
    """The seats ``run`` plays in a match: those ``seats`` names (globs, comma-separated), else the ones it trained.

    Raises:
        ValueError: ``seats`` names an agent the run did not train, or is missing for a run that trained every seat
            (so which side it plays is not known).
    """
    agents = list(run.spec.possible_agents)
    if seats:
        chosen = resolve_seats(agents, seats.split(","))
        untrained = [a for a in chosen if a not in run.trained]
        if untrained:
            raise ValueError(f"{run.directory} trained {run.trained}, not {untrained}")
        return chosen
    if run.partial:
        return list(run.trained)
    teams = sorted({team_of(a) for a in agents})
    raise ValueError(
        f"{run.directory} trained every seat of {run.spec.scenario} ({', '.join(agents)}): say which side it plays "
        f"with --seats GLOB (e.g. --seats '{teams[0]}_*')"
    )


def side_policy(name: str, seats: list[str], spec: WorldSpec, seed: int, own: TrainedRun | None = None) -> Any:
    """A policy that acts for ``seats`` in many worlds at once (``act(obs, greedy)``, agents/match.py).

    ``name`` is ``trained`` (``own``'s policy), a run directory (its trained policy: it must have trained those seats
    in a world of the same spaces), or a per-seat policy name (``random`` seeded ``seed`` plus the seat's index in the
    world, so that every match draws the same numbers).

    Raises:
        ValueError: the name means no policy, or a run that did not train those seats.
    """
    if name == "trained":
        assert own is not None, "'trained' is the run's own policy: pass the run"
        return load_trained_policy(own.directory, own.checkpoint)
    if os.path.isdir(name):
        other = trained_run(name)
        missing = [a for a in seats if a not in other.trained]
        if missing:
            raise ValueError(f"{name} trained {other.trained}: it has no policy for {missing}")
        for agent in seats:
            theirs = (other.spec.observation_spaces[agent], other.spec.action_spaces[agent])
            if theirs != (spec.observation_spaces[agent], spec.action_spaces[agent]):
                raise ValueError(f"{name} trained {agent} in another world ({other.spec.scenario}): its spaces differ")
        return load_trained_policy(name)
    policies = {}
    for agent in seats:
        obs_space, act_space = spec.observation_spaces[agent], spec.action_spaces[agent]
        if name == "random":
            policies[agent] = random_policy(obs_space, act_space, seed=seed + spec.possible_agents.index(agent))
        else:
            policies[agent] = seat_policy(name, obs_space, act_space, agent)
    return SeatPolicies(policies)


def team_of(agent: str) -> str:
    """An agent's team, the name before its last ``_`` (``predator_0`` -> ``predator``), as ``--agent-policy`` reads."""
    return str(agent).rsplit("_", 1)[0]


def seats_label(seats: list[str], agents: list[str]) -> str:
    """Seats in few words: a whole team as ``team_*``, other seats by name (``predator_*``, ``agent_0,agent_1``)."""
    parts: list[str] = []
    for agent in seats:
        team = [a for a in agents if team_of(a) == team_of(agent)]
        whole = len(team) > 1 and all(a in seats for a in team)
        part = f"{team_of(agent)}_*" if whole else agent
        if part not in parts:
            parts.append(part)
    return ",".join(parts)
