"""K worlds × N agents as arrays, one message per server per step: the learners' path.

The K worlds are created in contiguous chunks over one or more servers (one socket per server). A step slices the
actions by chunk, sends one ``step_batch`` per chunk to every server before reading any reply (so the servers step
in parallel), then concatenates the replies in world order. The Python work per step is a few numpy calls per
chunk and per field; nothing loops over worlds or agents of a world. ``step_async(actions, rows)`` and ``step_wait``
split a step in two, for some rows of the batch, so that several parts of it can be in flight at once (pipelining).

With ``seats``, the client holds only those seats of each world (a learner training some agents against other
clients, e.g. agents/opponents.py): the worlds wait until every seat is held, step by their own rule (a deadline
fills the seats whose holder is late) and reset themselves, and a step is one ``act_batch`` per chunk.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.agents.client import HELLO_TIMEOUT_S, AgentClient
from agora_marl.agents.types import encode_value
from agora_marl.envserver.protocol import WorldSpec, from_wire, rows_of, write_row, zeros_like_space
from agora_marl.envserver.protocol.vocabulary import LAYOUT_AGENTS, LAYOUT_STACKED, LAYOUTS


@dataclass
class BatchResult:
    """One batched reset or step of K worlds. Rows follow world order; columns follow ``possible_agents``."""

    obs: dict[str, np.ndarray] | np.ndarray
    """Layout "agents": ``{agent: (K, *obs_shape)}``; "stacked": ``(K, N, *obs_shape)``. Zeros for dead agents."""
    alive: np.ndarray
    """(K, N) bool: the agent is alive in ``obs`` (it acts at the next step)."""
    rewards: np.ndarray | None = None
    """(K, N) float32 rewards of the step (None after a reset)."""
    terminated: np.ndarray | None = None
    """(K, N) bool."""
    truncated: np.ndarray | None = None
    """(K, N) bool."""
    episode_over: np.ndarray | None = None
    """(K,) bool: the world's episode ended at this step and it auto-reset (``obs`` is the new episode's)."""
    final_obs: dict[str, np.ndarray] | np.ndarray | None = None
    """The last observations of the ended episodes, laid out as ``obs``; rows valid where ``episode_over``."""
    state: np.ndarray | None = None
    """(K, *state_shape) global states, when created with ``state=True``."""
    final_state: np.ndarray | None = None
    """(K, *state_shape) global states at the end of the ended episodes; rows valid where ``episode_over``."""
    opponent_late: float | None = None
    """Partial seats only (after a step): the fraction of the other seats of the K worlds that were held but had not
    acted by the deadline, so got the fill action (a slow or dead opponent)."""
    own_late: float | None = None
    """Partial seats only (after a step): the fraction of this client's seats filled at the deadline because it came
    late (a pause between steps longer than the deadline: the world went on without it)."""


@dataclass
class _Chunk:
    """Worlds ``rows`` of the batch, living on one server and stepped by one request."""

    client: AgentClient
    worlds: list[int]
    rows: slice


@dataclass
class PendingStep:
    """A step sent with :meth:`BatchedWorlds.step_async`: what :meth:`BatchedWorlds.step_wait` collects."""

    rows: slice
    """The worlds stepped: rows of the batch."""
    requests: list[tuple[AgentClient, int]]
    """One request per chunk of worlds the rows cover: (its server's client, request id)."""


class BatchedWorlds:
    """K worlds of one scenario whose every seat (or, with ``seats``, some seats) this client holds, stepped as arrays.

    Args:
        addresses: one server endpoint or a list; worlds are spread over them in contiguous chunks.
        scenario: the scenario name.
        config: the scenario's keyword config.
        num_worlds: K.
        seed: world k is seeded ``seed + k`` (None: unseeded).
        layout: ``"agents"`` (a dict of per-agent arrays) or ``"stacked"`` (one array with an agent axis; every
            agent must share one observation and one action space).
        state: also return each world's global state (for centralized critics).
        timeout_s: how long to wait for any reply.
        server_key: the servers' CurveZMQ public key (Z85), for servers run with ``--curve-secret``.
        client_key: this client's secret certificate (``NAME.key_secret``), for servers run with ``--clients``.
        keep_alive_s: how long the server keeps the worlds through a silence (a learner's update between rollouts),
            as asked at ``hello`` (the server grants at most its ``--max-keep-alive``).
        seats: hold only these seats of each world (agent names or globs such as ``"predator_*"``, one or a
            list); None: every seat. Other clients join the rest (:attr:`placement` says where; agents/opponents.py
            plays them).
            ``possible_agents`` and the spaces are then this client's seats'; ``state`` is refused (a partial
            holder gets no global state); ``reset`` returns the current observations (the worlds reset themselves).
        deadline_ms: with ``seats``: the worlds' deadline, after which a seat whose holder has not acted is filled.
            It bounds what a dead opponent costs per step, and how long this client may pause between steps (a
            learner's update) before the worlds go on without it. None: the server's default.
        group: with ``seats``: name the worlds on every server, so that another client takes the other seats of all
            of them by that name (:meth:`join_group`) instead of by world ids.
        invite_only: with ``seats``: the other seats are by invitation: only a client that brings the server's
            :attr:`invite_tokens` entry may take them.
        render: create the worlds to draw frames (``create``'s ``render``), for a watcher (``agora watch``): a world
            is drawn only when someone asks for a frame.
        parts: create the worlds in this many contiguous parts of rows (``numpy.array_split`` of the K rows), each
            by requests of its own, so that :meth:`step_async` may step one part alone: a vector block (one
            per ``create``) steps only whole. A learner that keeps P parts in flight asks for P. Copy k is seeded
            ``seed + k`` however the worlds are split.

    :meth:`join_group` makes the other side: the seats of worlds another client created as a group.
    """

    def __init__(
        self,
        addresses: str | list[str],
        scenario: str,
        config: dict | None = None,
        num_worlds: int = 1,
        seed: int | None = None,
        layout: str = "agents",
        state: bool = False,
        timeout_s: float = 60.0,
        server_key: str | None = None,
        client_key: str | None = None,
        keep_alive_s: float | None = 300.0,
        seats: str | list[str] | None = None,
        deadline_ms: int | None = None,
        group: str | None = None,
        invite_only: bool = False,
        render: bool = False,
        parts: int = 1,
    ):
        if (group is not None or invite_only) and seats is None:
            raise ValueError("group and invite_only are for worlds whose other seats others hold: give seats too")
        self._start(layout, addresses, state, keep_alive_s, seed, num_worlds, seats is not None)
        try:
            self._create(
                self._addresses,
                scenario,
                config or {},
                timeout_s,
                server_key,
                client_key,
                seats,
                deadline_ms,
                group,
                invite_only,
                render,
                parts,
            )
            self._describe()
        except BaseException:
            self.close()
            raise

    @classmethod
    def join_group(
        cls,
        addresses: str | list[str],
        group: str,
        seats: str | list[str],
        invite_token: str | dict[str, str] | None = None,
        layout: str = "agents",
        timeout_s: float = 60.0,
        server_key: str | None = None,
        client_key: str | None = None,
        keep_alive_s: float | None = 300.0,
    ) -> BatchedWorlds:
        """Hold ``seats`` (names or globs) of every world of the named ``group`` on each server, which another
        client created (``BatchedWorlds(..., seats=..., group=...)``, or ``create``'s ``group``): the worlds are
        its, in its row order, server after server; this client steps its seats with one ``act_batch`` per server.

        Args:
            invite_token: the owner's invitation where its seats are invitation-only: one token, or one per server
                address.

        Raises:
            ServerError: ``unknown_group`` (no group of that name on a server), ``seat_taken``, ``not_allowed``...
            ValueError: the servers' groups hold worlds of different specs.
        """
        self = cls.__new__(cls)
        self._start(layout, addresses, False, keep_alive_s, None, 0, True)
        self.owns = False
        try:
            for address in self._addresses:
                client = self._connect(address, timeout_s, server_key, client_key)
                token = invite_token.get(address) if isinstance(invite_token, dict) else invite_token
                joined = client.join_group(group, seats, invite_token=token)
                if self.spec is not None and joined.spec != self.spec:
                    raise ValueError(
                        f"group {group!r} holds worlds of another spec on {address} than on the first server"
                    )
                self.spec, self._seats = joined.spec, joined.seats
                self._chunks.append(
                    _Chunk(client, joined.worlds, slice(self.num_worlds, self.num_worlds + len(joined.worlds)))
                )
                self.num_worlds += len(joined.worlds)
            self.group = group
            self._describe()
        except BaseException:
            self.close()
            raise
        return self

    def _start(
        self,
        layout: str,
        addresses: str | list[str],
        state: bool,
        keep_alive_s: float | None,
        seed: int | None,
        num_worlds: int,
        partial: bool,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addresses:
            raise ValueError("give at least one server address")
        if partial and state:
            raise ValueError("a client holding some seats gets no global state: pass state=False with seats")
        self._addresses = addresses
        self.num_worlds = num_worlds
        self.layout = layout
        self.want_state = state
        self._keep_alive_s = keep_alive_s
        self._seed = seed
        self._seeded_once = False
        self._clients: list[AgentClient] = []
        self._chunks: list[_Chunk] = []
        self.spec: WorldSpec | None = None
        self.partial = partial
        """This client holds only some seats of the worlds (``seats`` was given, or it joined a group)."""
        self.owns = True
        """This client created the worlds (it closes them at the end); False for a :meth:`join_group` client,
        which leaves them."""
        self.group: str | None = None
        """The name of the worlds' group on each server, if they have one."""
        self.owner_tokens: dict[str, str] = {}
        """Partial seats: each server's ``owner_token`` of the worlds (reclaims them from another connection)."""
        self.observer_tokens: dict[str, str] = {}
        """Partial seats: each server's ``observer_token`` of the worlds (lets a watcher observe them)."""
        self.invite_tokens: dict[str, str] = {}
        """Partial seats: each server's ``invite_token`` (admits a client to invitation-only seats)."""

    def _describe(self) -> None:
        spec = self.spec
        self.possible_agents: list[str] = list(spec.possible_agents) if not self.partial else self._seats
        self.other_agents: list[str] = [a for a in spec.possible_agents if a not in self.possible_agents]
        """The seats other clients hold (empty unless ``seats`` was given)."""
        self.observation_spaces: dict[str, spaces.Space] = {a: spec.observation_spaces[a] for a in self.possible_agents}
        self.action_spaces: dict[str, spaces.Space] = {a: spec.action_spaces[a] for a in self.possible_agents}
        self.state_space: spaces.Space | None = None if self.partial else spec.state_space
        if self.layout == LAYOUT_STACKED:
            self._check_stackable()

    def _connect(self, address: str, timeout_s: float, server_key: str | None, client_key: str | None) -> AgentClient:
        client = AgentClient(
            address, timeout_s=timeout_s, name="BatchedWorlds", server_key=server_key, client_key=client_key
        )
        self._clients.append(client)
        # A dead address fails in seconds; a long update between rollouts does not cost the worlds.
        client.hello(keep_alive_s=self._keep_alive_s, timeout_s=min(timeout_s, HELLO_TIMEOUT_S))
        return client

    def _create(
        self,
        addresses: list[str],
        scenario: str,
        config: dict,
        timeout_s: float,
        server_key: str | None,
        client_key: str | None,
        seats: str | list[str] | None,
        deadline_ms: int | None,
        group: str | None,
        invite_only: bool,
        render: bool,
        parts: int,
    ) -> None:
        if self.num_worlds < 1:
            raise ValueError(f"num_worlds must be at least 1, got {self.num_worlds}")
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        shares = np.array_split(np.arange(self.num_worlds), min(len(addresses), self.num_worlds))
        part_starts = {int(p[0]) for p in np.array_split(np.arange(self.num_worlds), min(parts, self.num_worlds))}
        self.group = group
        for address, rows in zip(addresses, shares, strict=False):
            client = self._connect(address, timeout_s, server_key, client_key)
            max_batch = int(client.welcome["limits"].get("max_batch", len(rows)))
            first, end = int(rows[0]), int(rows[-1]) + 1
            cuts = sorted({first, end, *(p for p in part_starts if first < p < end)})
            segments = [
                (lo, min(lo + max_batch, b)) for a, b in itertools.pairwise(cuts) for lo in range(a, b, max_batch)
            ]
            for lo, hi in segments:
                seed = None if self._seed is None else self._seed + lo
                if seats is None:
                    created = client.create(scenario, config, seed=seed, copies=hi - lo, join=True, render=render)
                else:
                    # Per-copy worlds that wait for every seat: nothing ticks before the other clients joined.
                    created = client.create(
                        scenario,
                        config,
                        seed=seed,
                        copies=hi - lo,
                        deadline_ms=deadline_ms,
                        wait_for_seats=True,
                        group=group,
                        invite_only=["*"] if invite_only else None,  # the owner takes its own seats regardless
                        render=render,
                    )
                    self.owner_tokens[address] = created.owner_token
                    self.observer_tokens[address] = created.observer_token
                    self.invite_tokens[address] = created.invite_token
                self._chunks.append(_Chunk(client, created.worlds, slice(lo, hi)))
                self.spec = self.spec or created.spec
                if seats is not None:
                    self._seats = resolve_seats(self.spec.possible_agents, seats)
                    pending = [client.send("join", world=world, seats=self._seats) for world in created.worlds]
                    for request_id in pending:
                        client.reply(request_id)

    def _check_stackable(self) -> None:
        first = self.possible_agents[0]
        obs, act = self.observation_spaces[first], self.action_spaces[first]
        if not all(self.observation_spaces[a] == obs and self.action_spaces[a] == act for a in self.possible_agents):
            raise ValueError(
                f"layout 'stacked' needs every agent of {self.spec.scenario} to share one observation and one action "
                "space; use layout 'agents'"
            )

    @property
    def worlds(self) -> list[int]:
        """The world ids, in row order (ids are per server)."""
        return [w for chunk in self._chunks for w in chunk.worlds]

    @property
    def placement(self) -> list[tuple[str, list[int]]]:
        """``(server address, world ids)`` per server, in row order: where other clients find the worlds' seats."""
        by_server: dict[str, list[int]] = {}
        for chunk in self._chunks:
            by_server.setdefault(chunk.client.address, []).extend(chunk.worlds)
        return list(by_server.items())

    def seat_states(self) -> list[dict[str, str]]:
        """Each world's seats, ``{agent: "free" | "held" | "lost"}``, in row order (one ``list`` per server): e.g.
        whether other clients have taken the seats this client leaves them."""
        states: list[dict[str, str]] = []
        for client in self._clients:
            listed = {w["world"]: w["seats"] for w in client.list_worlds()}
            states += [listed.get(w, {}) for chunk in self._chunks if chunk.client is client for w in chunk.worlds]
        return states

    @property
    def heartbeat_timeout_s(self) -> float:
        """The shortest heartbeat timeout of the servers: call :meth:`heartbeat` more often than this when idle."""
        return min(float(c.welcome["limits"]["heartbeat_timeout_s"]) for c in self._clients if c.welcome)

    def heartbeat(self) -> None:
        """Keep the seats alive through a long pause between steps (a learner's update), without waiting."""
        for client in self._clients:
            client.heartbeat()

    def reset(self, seed: int | None = None) -> BatchResult:
        """Reset every world (world k seeded ``seed + k``; the first reset uses the constructor's seed).

        With partial seats the worlds are shared and reset themselves: this returns the current observations of
        this client's seats, and ``seed`` is ignored (the constructor's seeded the worlds).
        """
        if self.partial:
            return self._observe()
        if seed is None and not self._seeded_once:
            seed = self._seed
        self._seeded_once = True
        requests = [
            chunk.client.send(
                "reset_batch",
                worlds=chunk.worlds,
                seed=None if seed is None else seed + chunk.rows.start,
                layout=self.layout,
                state=self.want_state,
            )
            for chunk in self._chunks
        ]
        return self._result(
            [chunk.client.reply(request_id) for chunk, request_id in zip(self._chunks, requests, strict=True)]
        )

    def step(self, actions: dict[str, Any] | np.ndarray) -> BatchResult:
        """Step every world once: ``actions`` is ``{agent: (K, ...)}`` (layout "agents") or ``(K, N, ...)``.

        Rows of agents that are not alive are ignored but must hold valid actions (e.g. the no-op). With partial seats,
        ``actions`` covers this client's seats only; the step waits until every world stepped (at most its deadline).
        """
        return self.step_wait(self.step_async(actions))

    def step_async(self, actions: dict[str, Any] | np.ndarray, rows: slice | None = None) -> PendingStep:
        """Send one step of the worlds in ``rows`` (default: all K) without waiting; :meth:`step_wait` returns it.

        ``actions`` covers those rows only: ``{agent: (len(rows), ...)}`` or ``(len(rows), N, ...)``. Steps of
        disjoint rows may be in flight at once, so that a learner computes the actions of one part of its worlds while
        the servers step another (gymnasium's ``step_async``/``step_wait``, EnvPool's async mode). Each world steps on
        its own actions alone: a part's result holds what a whole-batch step would give its rows.

        Raises:
            ValueError: ``rows`` is not a slice of ``range(num_worlds)`` with at least one row.
        """
        rows = slice(0, self.num_worlds) if rows is None else rows
        if not (
            isinstance(rows, slice)
            and rows.step in (None, 1)
            and isinstance(rows.start, int)
            and isinstance(rows.stop, int)
            and 0 <= rows.start < rows.stop <= self.num_worlds
        ):
            raise ValueError(f"rows must be a slice of range({self.num_worlds}) with at least one row, got {rows!r}")
        if self.layout == LAYOUT_STACKED and self.partial:
            actions = {a: actions[:, i] for i, a in enumerate(self.possible_agents)}
        if self.layout == LAYOUT_AGENTS or self.partial:
            wire = {a: encode_value(self.action_spaces[a], actions[a]) for a in self.possible_agents}
        else:
            wire = encode_value(self.action_spaces[self.possible_agents[0]], actions)
        requests = []
        for chunk in self._chunks:
            lo, hi = max(rows.start, chunk.rows.start), min(rows.stop, chunk.rows.stop)
            if lo >= hi:
                continue
            worlds = chunk.worlds[lo - chunk.rows.start : hi - chunk.rows.start]
            part = rows_of(wire, slice(lo - rows.start, hi - rows.start))
            if self.partial:
                request = chunk.client.send("act_batch", worlds=worlds, actions=part)
            else:
                request = chunk.client.send(
                    "step_batch", worlds=worlds, actions=part, layout=self.layout, state=self.want_state
                )
            requests.append((chunk.client, request))
        return PendingStep(rows, requests)

    def step_wait(self, pending: PendingStep) -> BatchResult:
        """The result of a step sent with :meth:`step_async`: its rows only, in world order."""
        replies = [client.reply(request_id) for client, request_id in pending.requests]
        return self._result(replies)

    def _result(self, replies: list[dict]) -> BatchResult:
        """The one decoder of ``batch`` replies (``step_batch``, ``reset_batch``, ``act_batch``): the chunks' rows
        concatenated in world order, observations decoded and laid out, and, for an ``act_batch``, who was late."""
        fields: dict[str, Any] = {}
        for name in ("obs", "alive", "rewards", "terminated", "truncated", "episode_over", "state"):
            if name in replies[0]:
                fields[name] = _concat([r[name] for r in replies])
        for name, like in (("final_obs", "obs"), ("final_state", "state")):
            if any(name in r for r in replies):
                fields[name] = _concat([r[name] if name in r else _zeros_like(r[like]) for r in replies])
        if self.layout == LAYOUT_AGENTS or self.partial:  # per-agent maps on the wire (act_batch's always are)
            for name in ("obs", "final_obs"):
                if name in fields:
                    fields[name] = self._laid_out(
                        {a: from_wire(self.observation_spaces[a], fields[name][a]) for a in self.possible_agents}
                    )
        if "late" in replies[0]:
            late = _concat([r["late"] for r in replies])
            columns = list(replies[0]["agents"])
            mine = [columns.index(a) for a in self.possible_agents]
            others = [columns.index(a) for a in self.other_agents]
            fields["own_late"] = float(late[:, mine].mean())
            fields["opponent_late"] = float(late[:, others].mean()) if others else 0.0
        return BatchResult(**fields)

    def _observe(self) -> BatchResult:
        requests = [
            (chunk.client, chunk.client.send("observe", world=w)) for chunk in self._chunks for w in chunk.worlds
        ]
        replies = [client.reply(request_id) for client, request_id in requests]
        obs = {a: zeros_like_space(self.observation_spaces[a], (self.num_worlds,)) for a in self.possible_agents}
        alive = np.zeros((self.num_worlds, len(self.possible_agents)), bool)
        for k, reply in enumerate(replies):
            values = self.spec.decode_obs(reply.get("obs"))
            for i, agent in enumerate(self.possible_agents):
                if agent in values and agent in (reply.get("agents") or []):
                    alive[k, i] = True
                    write_row(obs[agent], k, values[agent])
        return BatchResult(obs=self._laid_out(obs), alive=alive)

    def _laid_out(self, obs: dict[str, Any]) -> dict[str, Any] | np.ndarray:
        if self.layout == LAYOUT_AGENTS:
            return obs
        return np.stack([obs[a] for a in self.possible_agents], axis=1)

    def close(self) -> None:
        """Close the worlds (a :meth:`join_group` client leaves them instead; pipelined, one request each) and the
        sockets. Idempotent; never raises."""
        pending = []
        op = "close" if self.owns else "leave"  # a joiner gives its seats back; the worlds are their owner's
        for chunk in self._chunks:
            for world in chunk.worlds:
                try:
                    pending.append((chunk.client, chunk.client.send(op, world=world)))
                except Exception:  # a closed or dead connection: nothing left to release on it
                    break
        deadline = time.monotonic() + 2.0
        for client, request_id in pending:
            with contextlib.suppress(Exception):  # the server may already be gone; closing must still succeed
                client.reply(request_id, timeout_s=max(0.0, deadline - time.monotonic()))
        self._chunks = []
        for client in self._clients:
            client.close()
        self._clients = []

    def __enter__(self) -> BatchedWorlds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        servers = len({id(c.client) for c in self._chunks})
        return f"BatchedWorlds({self.spec.scenario if self.spec else '?'}, K={self.num_worlds}, servers={servers})"


def resolve_seats(agents: list[str], seats: str | list[str]) -> list[str]:
    """The agents ``seats`` names, in the world's order: agent names or globs (``"predator_*"``), one or a list.

    Raises:
        ValueError: an entry that matches no agent of the world (the message lists the world's agents).
    """
    patterns = [seats] if isinstance(seats, str) else list(seats)
    unmatched = [p for p in patterns if not any(fnmatchcase(a, p) for a in agents)]
    if unmatched or not patterns:
        raise ValueError(f"seats {unmatched or patterns} match no agent of the world; its agents are {agents}")
    return [a for a in agents if any(fnmatchcase(a, p) for p in patterns)]


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts, axis=0)


def _zeros_like(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _zeros_like(v) for k, v in value.items()}
    return np.zeros_like(value)
