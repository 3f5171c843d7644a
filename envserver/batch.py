"""Batched stepping: K worlds of one spec, actions in and results out as stacked arrays.

This is the learners' hot path. Arrays come in already validated for the whole batch (a handful of numpy calls
per agent, not per world); the only per-world Python work left is the scenario's own ``step``, and results are
written straight into preallocated ``(K, ...)`` arrays.

Layouts (docs/protocol.md, 'step_batch'): ``agents`` keeps one array per agent, ``stacked`` one array per field
with the agent axis second (all agents must share their spaces).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.envserver.protocol import check_value, rows_of, write_row, zeros_like_space
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_ACTION, BAD_REQUEST, LAYOUT_STACKED
from agora_marl.envserver.world import World


def _as_action(space: spaces.Space, row: Any) -> Any:
    if isinstance(space, spaces.Discrete):
        return int(row)
    if isinstance(space, spaces.Tuple):
        return tuple(_as_action(s, row[str(i)]) for i, s in enumerate(space.spaces))
    if isinstance(space, spaces.Dict):
        return {key: _as_action(s, row[key]) for key, s in space.spaces.items()}
    return row


def batch_reply(
    worlds: Any,
    obs: Any,
    alive: np.ndarray,
    *,
    rewards: np.ndarray | None = None,
    terminated: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    episode_over: np.ndarray | None = None,
    final_obs: Any = None,
    state: np.ndarray | None = None,
    final_state: np.ndarray | None = None,
    seats: list[str] | None = None,
    agents: list[str] | None = None,
    active: np.ndarray | None = None,
    filled: np.ndarray | None = None,
    late: np.ndarray | None = None,
    tick: np.ndarray | None = None,
    episode: np.ndarray | None = None,
) -> dict:
    """The one ``batch`` reply (docs/protocol.md, 'step_batch'), of ``step_batch``, ``reset_batch`` and ``act_batch``
    alike: the fields given, the absent ones (None) left out.

    A reset gives ``obs`` and ``alive`` (and ``state``); a step adds ``rewards``, ``terminated``, ``truncated`` and
    ``episode_over`` (all four); ``act_batch`` adds the columns' ``seats``, every agent (``agents``) and what the
    sender's batch learns of each world (``active``, ``filled``, ``late``, ``tick``, ``episode``). Columns follow
    ``seats`` when given, else the worlds' agents.

    Raises:
        ValueError: a step's fields given in part, or a ``final_state`` without ``state`` (a server bug).
    """
    stepped = (rewards, terminated, truncated, episode_over)
    if any(f is None for f in stepped) and any(f is not None for f in stepped):
        raise ValueError("a batch step reply needs rewards, terminated, truncated and episode_over together")
    if final_state is not None and state is None:
        raise ValueError("a batch reply's final_state comes only with its state")
    reply = {"op": "batch", "worlds": worlds}
    if seats is not None:
        reply["seats"], reply["agents"] = seats, agents
    reply["obs"] = obs
    if rewards is not None:
        reply["rewards"], reply["terminated"], reply["truncated"] = rewards, terminated, truncated
    if active is not None:
        reply["active"] = active
    reply["alive"] = alive
    if episode_over is not None:
        reply["episode_over"] = episode_over
    if final_obs is not None:
        reply["final_obs"] = final_obs
    for name, value in (("filled", filled), ("late", late), ("tick", tick), ("episode", episode)):
        if value is not None:
            reply[name] = value
    if state is not None:
        reply["state"] = state
        if final_state is not None:
            reply["final_state"] = final_state
    return reply


def shared_spaces(world: World) -> tuple[spaces.Space, spaces.Space]:
    """The one observation and action space of a world whose agents all share them (stacked layout)."""
    first = world.agents[0]
    # Compare the wire encodings: plain maps compare far faster than gymnasium's Box.__eq__ (docs/performance.md).
    obs_specs, act_specs = world.spec["observation_spaces"], world.spec["action_spaces"]
    if not all(obs_specs[a] == obs_specs[first] and act_specs[a] == act_specs[first] for a in world.agents):
        raise ProtocolError(
            BAD_REQUEST,
            "layout 'stacked' needs every agent to share one observation and one action space",
            "use layout 'agents' for worlds whose agents differ (e.g. two teams)",
        )
    return world.obs_spaces[first], world.act_spaces[first]


class BatchStepper:
    """Steps a list of worlds that share one spec, in the given order."""

    def __init__(self, worlds: list[World], layout: str, with_state: bool):
        self.worlds = worlds
        self.layout = layout
        self.with_state = with_state
        self.template = worlds[0]
        self.agents = self.template.agents
        self.current: World | None = None
        """The world being stepped or reset, while :meth:`step` or :meth:`reset` runs: the one that raised, if one
        did (the worlds before it have moved, the ones after it have not)."""
        if with_state and self.template.state_space is None:  # refused here, before any world moves
            raise ProtocolError(BAD_REQUEST, "these worlds have no global state", "send 'state': false")
        if layout == LAYOUT_STACKED:
            self.obs_space, self.act_space = shared_spaces(self.template)
            self.plain_obs = not isinstance(self.obs_space, spaces.Dict | spaces.Tuple)

    # ---- inputs -------------------------------------------------------------------------------------------

    def check_actions(self, actions: Any) -> dict[str, Any]:
        """Per-agent action stacks of shape (K, ...), validated and converted; raises ``bad_action``."""
        k = len(self.worlds)
        try:
            if self.layout == LAYOUT_STACKED:
                array = check_value(self.act_space, actions, (k, len(self.agents)), "actions")
                return {a: rows_of(array, (slice(None), i)) for i, a in enumerate(self.agents)}
            if not isinstance(actions, dict):
                raise ValueError(
                    f"'actions' must be a map from agent to a (K, ...) array, got {type(actions).__name__}"
                )
            missing = [a for a in self.agents if a not in actions]
            if missing or len(actions) != len(self.agents):
                raise ValueError(f"'actions' needs exactly the agents {self.agents}; missing {missing}")
            return {a: check_value(self.template.act_spaces[a], actions[a], (k,), f"actions/{a}") for a in self.agents}
        except ValueError as exc:
            raise ProtocolError(BAD_ACTION, str(exc), "send one valid action per agent and world") from None

    # ---- outputs ------------------------------------------------------------------------------------------

    def _obs_buffers(self) -> Any:
        k = len(self.worlds)
        if self.layout == LAYOUT_STACKED:
            return zeros_like_space(self.obs_space, (k, len(self.agents)))
        return {a: zeros_like_space(self.template.obs_spaces[a], (k,)) for a in self.agents}

    def _write_obs(self, buffers: Any, k: int, obs: dict) -> None:
        if self.layout == LAYOUT_STACKED and self.plain_obs and len(obs) == len(self.agents):
            buffers[k] = [obs[a] for a in self.agents]  # every agent present: one assignment for the row
            return
        for i, agent in enumerate(self.agents):
            if agent in obs:
                if self.layout == LAYOUT_STACKED:
                    write_row(buffers, (k, i), obs[agent])
                else:
                    write_row(buffers[agent], k, obs[agent])

    def _state_buffer(self) -> np.ndarray | None:
        if not self.with_state:
            return None
        space = self.template.state_space
        return np.zeros((len(self.worlds), *space.shape), dtype=space.dtype)

    def reset(self, seed: int | None) -> dict:
        obs, alive, state = self._obs_buffers(), np.zeros((len(self.worlds), len(self.agents)), bool), None
        state = self._state_buffer()
        for k, world in enumerate(self.worlds):
            self.current = world
            world.reset(seed=None if seed is None else seed + k)
            self._write_obs(obs, k, world.obs)
            alive[k] = [a in world.obs for a in self.agents]
            if state is not None:
                state[k] = world.state()
        self.current = None
        return batch_reply([w.world_id for w in self.worlds], obs, alive, state=state)

    def _rows(self, actions: dict[str, Any]) -> dict[str, list]:
        """Per agent, the K actions as the objects the scenario gets: plain ints for Discrete, rows otherwise."""
        spaces_ = self.template.act_spaces
        return {
            a: actions[a].tolist()
            if isinstance(spaces_[a], spaces.Discrete)
            else [_as_action(spaces_[a], rows_of(actions[a], k)) for k in range(len(self.worlds))]
            for a in self.agents
        }

    def step(self, actions: dict[str, Any]) -> dict:
        n_worlds, n_agents = len(self.worlds), len(self.agents)
        agents = self.agents
        obs, final_obs = self._obs_buffers(), None
        # Per world, plain lists; one array per field at the end (a row assignment per world costs more).
        rewards, terminated, truncated = [], [], []
        alive = np.ones((n_worlds, n_agents), bool)
        over = np.zeros(n_worlds, bool)
        state, final_state = self._state_buffer(), None
        rows = self._rows(actions)
        for k, world in enumerate(self.worlds):
            env = world.env
            self.current = world
            result_obs, rew, term, trunc, _ = env.step({a: rows[a][k] for a in env.agents})
            world.record_step(result_obs, rew)
            rewards.append([rew.get(a, 0.0) for a in agents])
            terminated.append([term.get(a, False) for a in agents])
            truncated.append([trunc.get(a, False) for a in agents])
            if not env.agents:
                over[k] = True
                if final_obs is None:
                    final_obs = self._obs_buffers()
                    final_state = self._state_buffer()
                self._write_obs(final_obs, k, result_obs)
                if final_state is not None:
                    final_state[k] = world.state()
                world.reset()
            elif len(env.agents) < n_agents:
                alive[k] = [a in env.agents for a in agents]
            self._write_obs(obs, k, world.obs)
            if state is not None:
                state[k] = world.state()
        self.current = None
        return batch_reply(
            [w.world_id for w in self.worlds],
            obs,
            alive,
            rewards=np.array(rewards, np.float32).reshape(n_worlds, n_agents),
            terminated=np.array(terminated, bool).reshape(n_worlds, n_agents),
            truncated=np.array(truncated, bool).reshape(n_worlds, n_agents),
            episode_over=over,
            final_obs=final_obs,
            state=state,
            final_state=final_state,
        )
