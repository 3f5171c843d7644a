"""A match: sides' policies in the seats of the same seeded worlds through a server; each side's returns and who won.

A :class:`Side` is some seats and a policy that acts for them in many worlds at once, ``act(obs, greedy) ->
actions`` over ``{agent: (B, ...)}`` arrays, as a trained run's policy does (learners/policy.py) and
:class:`SeatPolicies` makes of per-seat ``obs -> action`` callables (agents/policies.py). The sides' seats must be
disjoint and cover the world. ``agora eval RUN_DIR --opponent ...`` plays one per opponent.

This client owns the worlds and holds every seat, so a world steps as soon as its actions arrive. It steps them with
``act``, one request per world and tick, all sent before any reply is read, rather than with ``step_batch``: only
``act`` replies carry the scenario's infos, which is where a world says who won. The worlds are created one by one,
so a vectorised scenario serves them as plain worlds (its copies step only as a whole vector block).

The winner of an episode is the side that the scenario's info names at its last step (``info["winner"]``: an agent
or a team, the name prefix of ``predator_0``; ``None`` a draw), as predator_prey_v0 does. In a world whose infos name
none, two sides that mirror each other (their seats pairwise of the same spaces) are compared by return, the higher
winning and equal a draw, as self-play does (learners/selfplay.py); otherwise the match has no winners.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agora_marl.agents.client import AgentClient
from agora_marl.envserver.protocol import WorldSpec, zeros_like_space

#: How the winners of a match were decided (:attr:`MatchResult.decided_by`).
BY_INFOS, BY_RETURNS, UNDECIDED = "infos", "returns", ""


class SeatPolicies:
    """Per-seat policies ``obs -> action`` acting in B worlds at once, the way a side's policy acts."""

    def __init__(self, policies: dict[str, Callable[[Any], Any]]):
        self.policies = policies

    def act(self, obs: dict[str, Any], greedy: bool = True) -> dict[str, Any]:
        return {a: np.stack([np.asarray(self.policies[a](o)) for o in values]) for a, values in obs.items()}


@dataclass
class Side:
    """One side of a match."""

    seats: list[str]
    """The agents it plays."""
    policy: Any
    """Acts for them: ``act(obs, greedy)`` over ``{agent: (B, ...)}`` arrays."""
    greedy: bool = True
    """Passed to ``policy.act``: play the mode of a trained policy's distribution, or sample it."""


@dataclass
class MatchResult:
    """What :func:`play_match` played: row i of every array is episode i."""

    returns: np.ndarray
    """``(episodes, sides)``: each side's return, the sum of its seats' rewards over the episode."""
    winners: np.ndarray
    """``(episodes,)``: the winning side's index, -1 for a draw; all -1 when the match is undecided."""
    decided_by: str
    """``infos`` (the scenario named the winners), ``returns`` (mirrored sides compared), or empty: no winners."""

    def win_rates(self) -> list[float] | None:
        """Each side's fraction of episodes won, or None when the match has no winners."""
        if self.decided_by == UNDECIDED:
            return None
        return [float(np.mean(self.winners == i)) for i in range(self.returns.shape[1])]


def play_match(
    addresses: str | list[str],
    scenario: str,
    config: dict,
    sides: list[Side],
    episodes: int,
    seed: int = 1_000_000,
    max_worlds: int = 128,
    timeout_s: float = 600.0,
    server_key: str | None = None,
    client_key: str | None = None,
) -> MatchResult:
    """Play ``episodes`` episodes of ``scenario`` with each side in its seats, world k seeded ``seed + k``.

    Worlds run in parallel (at most ``max_worlds``, spread over the servers); each contributes its first episodes in
    turn, so that short episodes are not favoured.

    Raises:
        ValueError: the sides' seats overlap, miss an agent of the world or name none of it; an info names a
            winner that is no side.
        TimeoutError: the episodes did not finish within ``timeout_s``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    addresses = [addresses] if isinstance(addresses, str) else list(addresses)
    num_worlds = min(episodes, max_worlds)
    quota = math.ceil(episodes / num_worlds)
    clients: list[AgentClient] = []
    worlds: list[tuple[AgentClient, int]] = []
    try:
        for address in addresses[:num_worlds]:
            client = AgentClient(
                address, timeout_s=timeout_s, name="match", server_key=server_key, client_key=client_key
            )
            clients.append(client)
            client.hello()
        spec, obs = None, []
        for k in range(num_worlds):
            client = clients[k % len(clients)]
            created = client.create(scenario, config, seed=seed + k, join=True)
            if spec is None:
                spec = created.spec
                _check_sides(spec, sides)
            worlds.append((client, created.worlds[0]))
            obs.append(dict(created.obs[created.worlds[0]]))
        return _play(spec, sides, worlds, obs, quota, episodes, time.monotonic() + timeout_s, timeout_s)
    finally:
        _close(clients, worlds)


def _play(
    spec: WorldSpec,
    sides: list[Side],
    worlds: list[tuple[AgentClient, int]],
    obs: list[dict[str, Any]],
    quota: int,
    episodes: int,
    deadline: float,
    timeout_s: float,
) -> MatchResult:
    side_of = {a: i for i, side in enumerate(sides) for a in side.seats}
    running = np.zeros((len(worlds), len(sides)))
    returns: list[list[np.ndarray]] = [[] for _ in worlds]
    winners: list[list[Any]] = [[] for _ in worlds]  # the infos' winner of each episode (None: a draw or unnamed)
    named = False
    while True:
        active = [k for k in range(len(worlds)) if len(returns[k]) < quota]
        if not active:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the match did not finish {episodes} episodes in {timeout_s} s")
        actions: dict[str, np.ndarray] = {}
        for side in sides:
            stacked = {
                a: np.stack([np.asarray(obs[k].get(a, zeros_like_space(spec.observation_spaces[a]))) for k in active])
                for a in side.seats
            }
            actions.update(side.policy.act(stacked, side.greedy))
        # Every seat acts, alive or not (a dead agent's action is ignored): so every reply has every seat's
        # observation, including those of agents that come back when the world auto-resets.
        requests = [
            worlds[k][0].send_act(worlds[k][1], {a: v[i] for a, v in actions.items()}) for i, k in enumerate(active)
        ]
        for k, request_id in zip(active, requests, strict=True):
            step = worlds[k][0].recv(request_id)
            for agent, reward in step.rewards.items():
                running[k, side_of[agent]] += reward
            if step.episode_over:
                winner = next((i["winner"] for i in step.infos.values() if "winner" in i), _UNNAMED)
                named = named or winner is not _UNNAMED
                returns[k].append(running[k].copy())
                winners[k].append(winner)
                running[k] = 0.0
            obs[k] = step.obs
    order = [(k, i) for i in range(quota) for k in range(len(worlds))][:episodes]
    table = np.array([returns[k][i] for k, i in order])
    if named:
        return MatchResult(table, np.array([_side_index(winners[k][i], sides) for k, i in order]), BY_INFOS)
    if len(sides) == 2 and _mirrored(spec, *sides):
        outcome = np.sign(table[:, 0] - table[:, 1])
        return MatchResult(table, np.where(outcome > 0, 0, np.where(outcome < 0, 1, -1)), BY_RETURNS)
    return MatchResult(table, np.full(len(table), -1), UNDECIDED)


#: An episode whose infos named no winner at all (unlike ``None``, a draw).
_UNNAMED = object()


def _side_index(winner: Any, sides: list[Side]) -> int:
    """The side that an info's ``winner`` (an agent, a team's name prefix, or None for a draw) names; -1 for none."""
    if winner is None or winner is _UNNAMED:
        return -1
    for i, side in enumerate(sides):
        if any(winner in (a, a.rsplit("_", 1)[0]) for a in side.seats):
            return i
    raise ValueError(
        f"the scenario named winner {winner!r}, which is no side's agent or team ({[s.seats for s in sides]})"
    )


def _mirrored(spec: WorldSpec, first: Side, second: Side) -> bool:
    """The two sides' seats pair off with the same spaces (a symmetric world), so their returns compare."""
    if len(first.seats) != len(second.seats):
        return False
    return all(
        spec.observation_spaces[a] == spec.observation_spaces[b] and spec.action_spaces[a] == spec.action_spaces[b]
        for a, b in zip(first.seats, second.seats, strict=True)
    )


def _close(clients: list[AgentClient], worlds: list[tuple[AgentClient, int]]) -> None:
    """Close the worlds (pipelined, waiting at most 2 s in all) and the sockets; never raises."""
    pending = []
    for client, world in worlds:
        with contextlib.suppress(Exception):  # a dead connection: nothing left to release on it
            pending.append((client, client.send("close", world=world)))
    deadline = time.monotonic() + 2.0
    for client, request_id in pending:
        with contextlib.suppress(Exception):
            client.reply(request_id, timeout_s=max(0.0, deadline - time.monotonic()))
    for client in clients:
        client.close()


def _check_sides(spec: WorldSpec, sides: list[Side]) -> None:
    agents = list(spec.possible_agents)
    seen: dict[str, int] = {}
    for i, side in enumerate(sides):
        unknown = [a for a in side.seats if a not in agents]
        if unknown or not side.seats:
            raise ValueError(f"side {i} plays {side.seats}: {unknown or 'no seat'} is not in the world ({agents})")
        for agent in side.seats:
            if agent in seen:
                raise ValueError(f"{agent} is played by sides {seen[agent]} and {i}: give every seat one side")
            seen[agent] = i
    missing = [a for a in agents if a not in seen]
    if missing:
        raise ValueError(f"no side plays {missing}: the sides must cover the world's agents {agents}")
