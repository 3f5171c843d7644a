"""What the client hands back (one dataclass per kind of reply), and actions put in their wire form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.envserver.protocol import WorldSpec


def encode_actions(spec: WorldSpec, actions: dict[str, Any]) -> dict[str, Any]:
    """Actions ``{agent: value}`` of a world with this spec in wire form (see :func:`encode_value`)."""
    return {a: encode_value(spec.action_spaces.get(a), v) for a, v in actions.items()}


def encode_value(space: spaces.Space | None, value: Any) -> Any:
    """One value (of ``space`` if known) in wire form.

    Dict and Tuple values become maps (Tuple keys "0", "1", ...); an integer for a Discrete space travels inline;
    everything else becomes an array. Nothing is cast to the space's dtype here: a float sent for a Discrete space
    must be refused by the server with ``bad_action``, not silently truncated by the client.
    """
    if isinstance(space, spaces.Dict):
        return {str(k): encode_value(s, value[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return {str(i): encode_value(s, value[i]) for i, s in enumerate(space.spaces)}
    if isinstance(space, spaces.Discrete) and isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"action {value!r:.80} is not numeric (dtype {array.dtype}); send numbers or arrays")
    if array.dtype.kind == "f" and isinstance(space, spaces.Box):
        # A float64 policy output for a float32 box: the server would cast it anyway; casting here halves the bytes.
        array = array.astype(space.dtype, copy=False)
    return array


@dataclass
class Created:
    """The reply to ``create``."""

    worlds: list[int]
    """The ids of the created worlds (copy i seeded ``seed + i``)."""
    spec: WorldSpec
    """The spec every created world shares."""
    owner_token: str
    """Reclaims ownership of the worlds from another connection (``join(..., owner_token=...)``)."""
    tokens: list[dict[str, str]] = field(default_factory=list)
    """With ``join=True``: one ``{agent: token}`` map per world."""
    obs: dict[int, dict[str, Any]] = field(default_factory=dict)
    """With ``join=True``: each world's first observations, ``obs[world][agent]``."""
    observer_token: str = ""
    """Admits an observer (``join(..., role="observer", observer_token=...)``): give it to whom may watch."""
    render: bool = False
    """The worlds give frames (``render``)."""
    invite_token: str = ""
    """Admits a session to the worlds' invitation-only seats (``join(..., invite_token=...)``, ``join_group``)."""
    group: str | None = None
    """The named group the worlds joined (``create(..., group=...)``), where others find them by name."""


@dataclass
class Joined:
    """The reply to ``join``."""

    world: int
    """The world joined."""
    seats: dict[str, str]
    """The seats now held, with their tokens (keep them to reclaim a seat after a disconnect)."""
    spec: WorldSpec
    """The world's spec."""
    tick: int
    """Steps taken in the current episode."""
    episode: int
    """The current episode's number."""
    agents: list[str]
    """The agents alive now."""
    obs: dict[str, Any]
    """The current observations of the joined seats."""


@dataclass
class JoinedGroup:
    """The reply to ``join_group``: the same seats of every world of a named group."""

    group: str
    """The group's name."""
    worlds: list[int]
    """The group's worlds, in the order they were created (the rows of a batch)."""
    seats: list[str]
    """The seats now held in every one of them, in the worlds' agent order."""
    tokens: list[dict[str, str]]
    """One ``{agent: token}`` map per world (keep them to reclaim a seat after a disconnect)."""
    spec: WorldSpec
    """The spec the worlds share."""
    obs: dict[int, dict[str, Any]]
    """The joined seats' current observations, ``obs[world][agent]``."""
    share_state: bool = False
    """The owner lets seat holders read the worlds' global state."""


@dataclass
class Observation:
    """The reply to ``reset`` and ``observe``."""

    world: int
    """The world observed."""
    tick: int
    """Steps taken in the current episode."""
    episode: int
    """The current episode's number."""
    agents: list[str]
    """The agents alive now."""
    obs: dict[str, Any]
    """Observations of the live agents the sender may see."""
    infos: dict[str, dict] = field(default_factory=dict)
    """Per-agent info maps."""


@dataclass
class StepResult:
    """The reply to ``act``: the world has stepped. Maps hold exactly the seats named in the request."""

    world: int
    """The world that stepped."""
    tick: int
    """Steps taken in the current episode (0 after an auto-reset)."""
    episode: int
    """The current episode's number (advanced by an auto-reset)."""
    agents: list[str]
    """The agents alive after the step."""
    obs: dict[str, Any]
    """Observations after the step (the new episode's first ones after an auto-reset)."""
    rewards: dict[str, float]
    """Rewards of this step (0 for an inactive seat)."""
    terminated: dict[str, bool]
    """Terminated flags of this step."""
    truncated: dict[str, bool]
    """Truncated flags of this step."""
    active: dict[str, bool]
    """False for a seat whose agent was not alive at this step (its action was ignored)."""
    infos: dict[str, dict]
    """The scenario's infos (numpy values made plain)."""
    episode_over: bool
    """No agent is alive any more: the episode ended at this step."""
    final_obs: dict[str, Any] | None = None
    """The episode's last observations, when the world auto-reset at this step."""
    filled: dict[str, str] = field(default_factory=dict)
    """Every seat of the world, not only this request's, whose action at this step was the world's fill action, and
    why: ``"late"`` (held, but no action by the deadline), ``"free"`` or ``"lost"``. Empty when every live seat
    acted."""
