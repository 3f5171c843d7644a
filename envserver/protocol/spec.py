"""A world's spec: its scenario, agents and spaces, in both directions between gymnasium spaces and the wire.

The server builds it from a scenario instance (:meth:`WorldSpec.of_env`) and sends :meth:`WorldSpec.to_wire` in
``created`` and ``joined`` replies; clients read it back with :meth:`WorldSpec.from_wire`. Learners store the same
map in checkpoints, so a trained policy can be rebuilt without a server (docs/protocol.md, 'The world spec').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.envserver.protocol.spaces import decode_space, encode_space, from_wire


@dataclass(frozen=True)
class WorldSpec:
    """A world's agents and spaces as gymnasium spaces.

    The space objects are created once per spec, so ``observation_spaces[a]`` is the same object on every call (as
    PettingZoo's API test demands).
    """

    scenario: str
    """The scenario name the world was created from."""
    config: dict
    """The keyword config the scenario was built with."""
    possible_agents: list[str]
    """Every agent id of the world, in the order of batched columns."""
    observation_spaces: dict[str, spaces.Space]
    """Observation space per agent."""
    action_spaces: dict[str, spaces.Space]
    """Action space per agent."""
    state_space: spaces.Space | None
    """The global state's space, or None where the world has none."""

    @classmethod
    def of_env(cls, scenario: str, config: dict, env: Any) -> WorldSpec:
        """The spec of a scenario instance (a PettingZoo ``ParallelEnv``).

        Its global state is the env's ``state_space`` where it declares one, else all observations concatenated when
        every observation is a Box, else none.
        """
        agents = list(env.possible_agents)
        return cls(
            scenario=scenario,
            config=dict(config),
            possible_agents=agents,
            observation_spaces={a: env.observation_space(a) for a in agents},
            action_spaces={a: env.action_space(a) for a in agents},
            state_space=_state_space_of(env),
        )

    @classmethod
    def from_wire(cls, wire: dict) -> WorldSpec:
        """The spec of a ``spec`` map (a ``created`` or ``joined`` reply, or a checkpoint).

        Raises:
            ValueError: a space of the map is malformed.
            KeyError: the map lacks ``possible_agents`` or a space of one of them.
        """
        agents = list(wire["possible_agents"])
        state = wire.get("state_space")
        return cls(
            scenario=str(wire.get("scenario", "")),
            config=dict(wire.get("config") or {}),
            possible_agents=agents,
            observation_spaces={a: decode_space(wire["observation_spaces"][a]) for a in agents},
            action_spaces={a: decode_space(wire["action_spaces"][a]) for a in agents},
            state_space=decode_space(state) if state is not None else None,
        )

    def to_wire(self) -> dict[str, Any]:
        """The spec as plain maps and lists (spaces in their wire encoding): what :meth:`from_wire` reads back."""
        return {
            "scenario": self.scenario,
            "config": dict(self.config),
            "possible_agents": list(self.possible_agents),
            "observation_spaces": {a: encode_space(self.observation_spaces[a]) for a in self.possible_agents},
            "action_spaces": {a: encode_space(self.action_spaces[a]) for a in self.possible_agents},
            "state_space": encode_space(self.state_space) if self.state_space is not None else None,
        }

    def decode_obs(self, values: dict | None) -> dict[str, Any]:
        """Wire observations ``{agent: value}`` as values of each agent's observation space."""
        if not values:
            return {}
        return {
            a: from_wire(self.observation_spaces[a], v) if a in self.observation_spaces else v
            for a, v in values.items()
        }


def _state_space_of(env: Any) -> spaces.Space | None:
    space = getattr(env, "state_space", None)
    if isinstance(space, spaces.Space):
        return space
    obs_spaces = [env.observation_space(a) for a in env.possible_agents]
    if all(isinstance(s, spaces.Box) for s in obs_spaces):
        size = sum(int(np.prod(s.shape)) for s in obs_spaces)
        dtype = np.result_type(*[s.dtype for s in obs_spaces])
        return spaces.Box(-np.inf, np.inf, (size,), dtype=dtype)
    return None
