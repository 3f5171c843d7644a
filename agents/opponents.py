"""An opponent at learner scale: one process that plays a named policy in some seats of K shared worlds.

A learner that trains some seats of its worlds (``BatchedWorlds(seats=...)``) needs someone in the others. This
module joins those seats of every world and acts for all of them with one ``act_batch`` per tick, the policy
called once per seat and world (agents/policies.py: ``random``, ``noop``, ``scripted``, ``module:callable``). It
stops after ``steps`` ticks or ``seconds``, or when the worlds go away (their owner closed them).

As a process: ``agora play --worlds 3,4,5 --seats "prey_*" --policy random`` (or ``--group NAME``), which is this loop
with trained run directories as policies too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from agora_marl.agents.batched import resolve_seats
from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.agents.policies import named_policy
from agora_marl.envserver.protocol import from_wire, zeros_like_space
from agora_marl.envserver.protocol.vocabulary import INTERRUPTED, UNKNOWN_WORLD

#: Errors that mean the worlds are gone or were taken from under the opponent: it stops, it does not fail.
_WORLDS_GONE = (INTERRUPTED, UNKNOWN_WORLD)


@dataclass
class Played:
    """What :func:`play_seats` did."""

    steps: int
    """Ticks stepped (one ``act_batch`` each)."""
    episodes: int
    """World episodes that ended while it played, summed over the worlds."""
    returns: dict[str, float]
    """Mean return per seat over the episodes that ended (seats absent when none ended)."""
    reason: str
    """Why it stopped: ``steps``, ``seconds`` or ``worlds closed``."""
    world_returns: list[list[float]] = field(default_factory=list)
    """Per world (in ``worlds`` order): the return of each episode that ended, summed over this client's seats."""
    others_late: int = 0
    """Seat-ticks of the other holders' seats that were held but late, so got the fill action."""
    others_seat_ticks: int = 0
    """Seat-ticks of the other seats stepped (``others_late`` out of these)."""
    worlds: list[int] = field(default_factory=list)
    """The worlds played (a group's, when found by name), the order of ``world_returns``."""


def play_seats(
    address: str,
    worlds: Sequence[int],
    seats: str | list[str],
    policy: str,
    steps: int | None = None,
    seconds: float | None = None,
    timeout_s: float = 60.0,
    server_key: str | None = None,
    client_key: str | None = None,
    run_loader: Callable | None = None,
    group: str | None = None,
    invite_token: str | None = None,
) -> Played:
    """Join ``seats`` of each of ``worlds`` on ``address`` and play ``policy`` in them, one ``act_batch`` per tick.

    Args:
        address: the server holding the worlds.
        worlds: their ids; every world must have the same spec and the seats free. Ignored with ``group``.
        seats: agents or globs (``"prey_*"``), one or a list.
        policy: a name :func:`agents.policies.named_policy` resolves (one policy per seat, shared by the worlds).
        steps, seconds: stop after this many ticks or this long (None: no such bound; with neither it plays until
            the worlds are closed).
        timeout_s: how long one tick may take (the other holders' deadline bounds it).
        server_key, client_key: as for :class:`AgentClient`.
        run_loader: loads a trained run's policy when ``policy`` is a run directory (``agora play`` passes the
            learners' one; this layer cannot import them).
        group: find the worlds by their group's name instead (``join_group``: the seats of every world of it);
            ``invite_token`` where the owner made them invitation-only.

    Raises:
        ValueError: no worlds, seats that name no agent, or a policy that cannot be built.
        ServerError: the server refused a join or a step for another reason than the worlds going away.
    """
    worlds = [int(w) for w in worlds]
    if not worlds and group is None:
        raise ValueError("give at least one world, or a group")
    with AgentClient(address, timeout_s=timeout_s, name="opponent", server_key=server_key, client_key=client_key) as c:
        welcome = c.hello()
        try:
            if group is not None:
                in_group = c.join_group(group, seats, invite_token=invite_token)
                worlds, mine = in_group.worlds, in_group.seats
                joined_obs = [in_group.obs[w] for w in worlds]
            else:
                mine = _join_first(c, worlds[0], seats)
                joined = [c.join(w, seats=mine) for w in worlds[1:]]
                joined_obs = [c.observe(worlds[0]).obs, *(j.obs for j in joined)]
        except ServerError as exc:
            if exc.code in _WORLDS_GONE:
                return Played(0, 0, {}, "worlds closed", [[] for _ in worlds], worlds=worlds)
            raise
        max_batch = int(welcome["limits"].get("max_batch", len(worlds)))
        chunks = [worlds[i : i + max_batch] for i in range(0, len(worlds), max_batch)]
        spec = c.spec(worlds[0])
        policies = {
            a: named_policy(policy, spec.observation_spaces[a], spec.action_spaces[a], agent=a, run_loader=run_loader)
            for a in mine
        }
        obs = {a: [o[a] if a in o else zeros_like_space(spec.observation_spaces[a]) for o in joined_obs] for a in mine}
        returns_k = np.zeros((len(worlds), len(mine)))
        ended: list[np.ndarray] = []
        per_world: list[list[float]] = [[] for _ in worlds]
        others_late = others_seat_ticks = 0
        done, reason, started = 0, "", time.monotonic()
        while True:
            if steps is not None and done >= steps:
                reason = "steps"
                break
            if seconds is not None and time.monotonic() - started >= seconds:
                reason = "seconds"
                break
            actions = {a: np.stack([np.asarray(policies[a](o)) for o in obs[a]]) for a in mine}
            try:
                replies = _act_batch(c, chunks, actions)
            except ServerError as exc:
                if exc.code in _WORLDS_GONE:
                    reason = "worlds closed"
                    break
                raise
            done += 1
            rewards = np.concatenate([r["rewards"] for r in replies])
            over = np.concatenate([r["episode_over"] for r in replies])
            returns_k += rewards
            late = np.concatenate([r["late"] for r in replies])
            others = [i for i, a in enumerate(replies[0]["agents"]) if a not in mine]
            others_late += int(late[:, others].sum())
            others_seat_ticks += late.shape[0] * len(others)
            if over.any():
                ended.append(returns_k[over].copy())
                for k in np.flatnonzero(over):
                    per_world[k].append(float(returns_k[k].sum()))
                returns_k[over] = 0.0
            obs = {a: [row for r in replies for row in _split(spec.observation_spaces[a], r["obs"][a])] for a in mine}
        _leave(c, worlds)
    finished = np.concatenate(ended) if ended else np.zeros((0, len(mine)))
    means = dict(zip(mine, (float(x) for x in finished.mean(0)), strict=True)) if len(finished) else {}
    return Played(done, len(finished), means, reason, per_world, others_late, others_seat_ticks, worlds)


def _leave(client: AgentClient, worlds: list[int], timeout_s: float = 2.0) -> None:
    """Give the seats back at once (pipelined), so that another client may take them without waiting for this
    session to be forgotten; worlds already gone are fine."""
    try:
        pending = [client.send("leave", world=w) for w in worlds]
        deadline = time.monotonic() + timeout_s
        for request_id in pending:
            with contextlib.suppress(ServerError):
                client.reply(request_id, timeout_s=max(0.0, deadline - time.monotonic()))
    except (TimeoutError, RuntimeError):
        pass


def _join_first(client: AgentClient, world: int, seats: str | list[str]) -> list[str]:
    """Join ``seats`` of ``world``; returns them in the world's order. A glob is resolved against the world's agents,
    which only a member sees: the client takes every free seat, keeps those the glob matches and leaves the rest (so
    start opponents that name their seats by glob one after another, or name the seats)."""
    patterns = [seats] if isinstance(seats, str) else list(seats)
    if not any(ch in p for p in patterns for ch in "*?["):
        joined = client.join(world, seats=patterns)
        return resolve_seats(joined.spec.possible_agents, list(joined.seats))
    joined = client.join(world, seats="all")
    mine = [a for a in resolve_seats(joined.spec.possible_agents, seats) if a in joined.seats]
    others = [a for a in joined.seats if a not in mine]
    if others:
        client.leave(world, seats=others)
    if not mine:
        raise ValueError(f"seats {seats!r} match no free seat of world {world} (free were {sorted(joined.seats)})")
    return mine


def _split(space, stack) -> list:
    """The K rows of a wire ``(K, ...)`` stack of observations, each a value of ``space``."""
    value = from_wire(space, stack)
    if isinstance(value, dict):
        count = len(next(iter(value.values())))
        return [{key: v[k] for key, v in value.items()} for k in range(count)]
    return list(value)


def _act_batch(client: AgentClient, chunks: list[list[int]], actions: dict[str, np.ndarray]) -> list[dict]:
    """One ``act_batch`` per chunk of worlds, all sent before any reply is read (the worlds step in parallel)."""
    requests, start = [], 0
    for chunk in chunks:
        rows = slice(start, start + len(chunk))
        requests.append(client.send("act_batch", worlds=chunk, actions={a: v[rows] for a, v in actions.items()}))
        start += len(chunk)
    return [client.reply(request_id) for request_id in requests]
