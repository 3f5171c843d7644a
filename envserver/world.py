"""One live world: a scenario instance, its seats, and the lockstep step rule.

A :class:`World` knows nothing of sockets. The server feeds it validated actions and asks it to step; the world
returns what each waiting request should be told. The step rule (docs/protocol.md, 'The step rule'): the world
steps when every held seat whose agent is alive has acted, or when the deadline passes, counted from the tick's
first action or, for an action sent before the world started, from the start; free, lost and late seats get the
fill action, and every reply names them (``filled``).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from agora_marl.envserver.protocol import noop_value, to_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_REQUEST, FREE, HELD, INTERRUPTED, LATE, LOST, UNKNOWN_SEAT
from agora_marl.envserver.protocol.wire import PLACED

#: How many finished episodes' returns a world keeps for ``list``.
RECENT_RETURNS = 10


@dataclass
class WorldOptions:
    """How a world behaves; set once by ``create``."""

    deadline_s: float = 1.0
    """Seconds after a tick's first action before missing seats are filled."""
    fill: str = "noop"
    """What a missing seat does: one of the protocol's ``FILL_KINDS`` (``noop``, ``random``, ``repeat``)."""
    auto_reset: bool = True
    """Reset as soon as the episode is over (the step reply then carries ``final_obs``)."""
    wait_for_seats: bool = True
    """Do not start the first tick until every seat has been held once."""


@dataclass
class Seat:
    agent: str
    token: str = ""
    holder: bytes | None = None
    state: str = FREE
    last_action: Any = None


@dataclass
class Waiter:
    """An ``act`` request waiting for its world to step."""

    identity: bytes
    """The session that sent it (``Session.identity``); its reply goes wherever that session last connected from."""
    request_id: int
    seats: list[str]
    batch: tuple | None = None
    """``(BatchWaiter, k)`` when this act is world k of an ``act_batch`` (envserver/partial.py)."""


@dataclass
class StepOutcome:
    """What one step produced, kept for the waiters' replies."""

    obs: dict
    rewards: dict
    terminated: dict
    truncated: dict
    infos: dict
    active_before: frozenset
    filled: dict[str, str]
    """Every live agent whose action was the fill, and why: its seat was ``free``, ``lost``, or held but ``late``."""
    final_obs: dict | None = None
    final_state: np.ndarray | None = None
    """The global state at the end of the episode, kept only when a waiting ``act_batch`` asked for states."""


@dataclass
class World:
    """A hosted scenario instance with seats. Built by the ``create`` handler."""

    world_id: int
    env: ParallelEnv
    spec: dict
    """The world spec in its wire form (``WorldSpec.to_wire()``), shared by the copies created together."""
    spec_key: bytes
    """A digest of ``spec``: worlds with equal keys may be stepped in one batch."""
    obs_spaces: dict
    act_spaces: dict
    """This world's own action space objects (seeded from the world's seed, for random fills)."""
    state_space: spaces.Space | None
    options: WorldOptions
    owner: bytes | None
    owner_token: str
    """Reclaims ownership from another connection; one for all the copies created together."""
    seed: int | None
    tick: int = 0
    episode: int = 0
    obs: dict = field(default_factory=dict)
    infos: dict = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)
    waiters: list[Waiter] = field(default_factory=list)
    observers: set[bytes] = field(default_factory=set)
    block: Any = None
    """The :class:`agora_marl.envserver.vector.VectorBlock` this world is copy ``index`` of, if it is vector-backed."""
    index: int = 0
    deadline_at: float | None = None
    public: bool = False
    """Listed to every session and observable by anyone (``create``'s ``public``); else only by its members, the
    sessions the owner admitted (``observer_token``) and operators."""
    observer_token: str = ""
    """Admits an observer; one for all the copies created together."""
    named_group: str | None = None
    """The name of the :mod:`agora_marl.envserver.groups` group the world was created into (``create``'s ``group``)."""
    invite_only: tuple[str, ...] = ()
    """Globs of the seats that only the owner and those who bring ``invite_token`` may take (``create``'s
    ``invite_only``); every other seat is open to any session that knows the world."""
    invite_token: str = ""
    """Admits a session to the invitation-only seats; one for all the copies created together, and for every world
    of their group."""
    share_state: bool = False
    """Seat holders may read the global state (``state``, ``act_batch``'s ``state``); else only the owner, a session
    holding every seat, and those who may watch the world: a joiner's critic never silently reads its opponents'
    private state."""
    renders: bool = False
    """``render`` gives frames (the env was built with ``render_mode="rgb_array"``, or its vector form renders)."""
    steps: int = 0
    """Steps since the world was created, over all episodes (for the steps/s that ``list`` shows)."""
    late_fills: int = 0
    """Seats that were held but got the fill action at a deadline, over the world's life."""
    episode_return: float = 0.0
    """The running sum of every agent's rewards in the current episode."""
    recent_returns: deque = field(default_factory=lambda: deque(maxlen=RECENT_RETURNS))
    last_rewards: dict = field(default_factory=dict)
    rate_mark: tuple[float, int] = (0.0, 0)
    """(time, steps) when ``list`` last measured the rate."""
    frame: np.ndarray | None = None
    frame_tick: tuple[int, int] = (-1, -1)
    """(episode, tick) of ``frame``: a world is drawn at most once per tick, however many watch it."""
    agents: list[str] = field(init=False)
    seats: dict[str, Seat] = field(init=False)
    rng: np.random.Generator = field(init=False)
    started: bool = field(init=False)
    """Every seat has been held once (or the world does not wait for seats): its ticks may be filled."""
    _sole_holder: bytes | None = field(default=None, init=False)
    _holder_dirty: bool = field(default=True, init=False)

    def __post_init__(self):
        self.agents = list(self.spec["possible_agents"])
        self.seats = {a: Seat(a) for a in self.agents}
        self.rng = np.random.default_rng(self.seed)
        for space in self.act_spaces.values():
            space.seed(int(self.rng.integers(2**31)))
        self.started = not self.options.wait_for_seats

    def refresh(self) -> None:
        """Bring tick and episode up to date (a vector-backed world keeps them in its block's arrays)."""
        if self.block is not None:
            self.tick = int(self.block.ticks[self.index])
            self.episode = int(self.block.episodes[self.index])

    # ---- episodes -------------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        """Start the next episode (an explicit ``reset``, an auto-reset, a ``reset_batch``): ``episode`` advances,
        ``tick`` starts again at 0, waiting actions are dropped. This and :meth:`record_step` alone write the
        episode state (obs, infos, tick, episode, steps, returns), whoever steps the world (:meth:`step`, batch.py)."""
        self.obs, self.infos = self.env.reset(seed=seed, options=options)
        self.tick = 0
        self.episode += 1
        self.pending.clear()
        self.deadline_at = None

    def record_step(self, obs: dict, rewards: dict, infos: dict | None = None) -> None:
        """Account one step of the scenario: its observations (and infos), counters and returns; an episode that
        ended keeps its return for ``list``."""
        self.tick += 1
        self.steps += 1
        self.last_rewards = rewards
        self.episode_return += float(sum(rewards.values()))
        self.obs = obs
        if infos is not None:
            self.infos = infos
        if self.episode_over:
            self.recent_returns.append(self.episode_return)
            self.episode_return = 0.0

    @property
    def live_agents(self) -> list[str]:
        return list(self.env.agents)

    @property
    def episode_over(self) -> bool:
        return not self.env.agents

    # ---- seats ----------------------------------------------------------------------------------------------

    def seat(self, agent: Any) -> Seat:
        if not isinstance(agent, str) or agent not in self.seats:
            raise ProtocolError(
                UNKNOWN_SEAT, f"world {self.world_id} has no agent {agent!r}", f"its agents are {self.agents}"
            )
        return self.seats[agent]

    def by_invitation(self, agent: str) -> bool:
        """Whether seat ``agent`` is one only the owner and invited sessions may take."""
        return any(fnmatchcase(agent, pattern) for pattern in self.invite_only)

    def held_by(self, identity: bytes) -> list[str]:
        return [a for a, s in self.seats.items() if s.holder == identity]

    def _seats_changed(self) -> None:
        self._holder_dirty = True
        if self.block is not None:
            self.block.holders_dirty = True

    def sole_holder(self) -> bytes | None:
        """The connection holding every seat, if one does (the condition for batched stepping).

        Asked on every batched step for every world, so it is cached and recomputed only after a seat changes.
        """
        if self._holder_dirty:
            holders = {s.holder for s in self.seats.values()}
            self._sole_holder = holders.pop() if len(holders) == 1 else None
            self._holder_dirty = False
        return self._sole_holder

    def take_seat(self, agent: str, identity: bytes) -> str:
        self._seats_changed()
        seat = self.seats[agent]
        seat.holder, seat.state = identity, HELD
        if not seat.token:
            seat.token = secrets.token_hex(16)
        if not self.started and all(s.state != FREE for s in self.seats.values()):
            self.started = True
        return seat.token

    def release_seat(self, agent: str, lost: bool) -> None:
        """The holder left (seat becomes free, token void) or went silent (seat lost, token kept)."""
        self._seats_changed()
        seat = self.seats[agent]
        seat.holder = None
        seat.state = LOST if lost else FREE
        if not lost:
            seat.token = ""

    # ---- lockstep -------------------------------------------------------------------------------------------

    def submit(
        self, identity: bytes, request_id: int, actions: dict[str, Any], now: float, batch: tuple | None = None
    ) -> None:
        """Record a validated act request. Actions of seats whose agent is not alive are ignored (they wait)."""
        live = set(self.env.agents)
        for agent, action in actions.items():
            if agent in live:
                self.pending[agent] = action
        self.waiters.append(Waiter(identity, request_id, list(actions), batch))
        self.arm_deadline(now)

    def arm_deadline(self, now: float) -> None:
        """Start the tick's deadline if an act waits and the world has started (an act sent before the start gets
        its deadline when the last seat is taken), so that every act is answered."""
        if self.deadline_at is None and self.started and self.waiters:
            self.deadline_at = now + self.options.deadline_s

    def ready(self) -> bool:
        """Every held seat whose agent is alive has acted, and someone is waiting."""
        if not self.started or not self.waiters:
            return False
        return all(a in self.pending for a in self.env.agents if self.seats[a].state == HELD)

    def _fill(self, agent: str) -> Any:
        space = self.act_spaces[agent]
        kind = self.options.fill
        if kind == "random":
            return space.sample()
        if kind == "repeat" and self.seats[agent].last_action is not None:
            return self.seats[agent].last_action
        noop = getattr(self.env, "noop_action", None)
        value = noop(agent) if callable(noop) else None
        return noop_value(space) if value is None else value

    def step(self) -> StepOutcome:
        """Step with the pending actions, filling the rest; auto-reset if the episode is over."""
        live = list(self.env.agents)
        actions, filled = {}, {}
        for agent in live:
            seat = self.seats[agent]
            if agent in self.pending:
                actions[agent] = self.pending[agent]
            else:
                actions[agent] = self._fill(agent)
                filled[agent] = LATE if seat.state == HELD else seat.state
            seat.last_action = actions[agent]
        self.pending.clear()
        self.deadline_at = None
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        outcome = StepOutcome(obs, rewards, terminated, truncated, infos, frozenset(live), filled)
        self.record_step(obs, rewards, infos)
        if filled:
            self.late_fills += sum(1 for why in filled.values() if why == LATE)
        if self.episode_over and self.options.auto_reset:
            outcome.final_obs = obs
            if any(w.batch is not None and w.batch[0].state is not None for w in self.waiters):
                outcome.final_state = self.state()
            self.reset()
        return outcome

    def replies(self, outcome: StepOutcome) -> list[tuple[bytes, dict]]:
        """One ``step`` reply per waiter, for the seats it named (and ``filled`` for the whole world); clears them."""
        out = []
        for waiter in self.waiters:
            if waiter.batch is not None:  # one world's row of an act_batch: the reply goes when its last world steps
                batch, k = waiter.batch
                if batch.record(k, self, outcome):
                    out.append((waiter.identity, batch.reply()))
                continue
            reply = {
                "op": "step",
                "id": waiter.request_id,
                "world": self.world_id,
                "tick": self.tick,
                "episode": self.episode,
                "agents": self.live_agents,
                "episode_over": outcome.final_obs is not None or self.episode_over,
                "rewards": {a: float(outcome.rewards.get(a, 0.0)) for a in waiter.seats},
                "terminated": {a: bool(outcome.terminated.get(a, False)) for a in waiter.seats},
                "truncated": {a: bool(outcome.truncated.get(a, False)) for a in waiter.seats},
                "active": {a: a in outcome.active_before for a in waiter.seats},
                "infos": {a: plain(outcome.infos.get(a, {})) for a in waiter.seats},
                "filled": outcome.filled,
            }
            self._place_obs(reply, "obs", self.obs, waiter.seats)
            if outcome.final_obs is not None:
                self._place_obs(reply, "final_obs", outcome.final_obs, waiter.seats)
            out.append((waiter.identity, reply))
        self.waiters.clear()
        return out

    def _place_obs(self, reply: dict, key: str, observations: dict, seats: list[str]) -> None:
        """Put the seats' observations in a reply: as placed arrays (wire.PLACED: pack skips its walk) when each is one
        array, as a map otherwise (Dict and Tuple spaces, or no seat alive: an empty map)."""
        obs = {a: to_wire(self.obs_spaces[a], observations[a]) for a in seats if a in observations}
        if obs and all(type(v) is np.ndarray for v in obs.values()):
            reply.setdefault(PLACED, []).extend(((key, a), v) for a, v in obs.items())
        else:
            reply[key] = obs

    def cancel_waiters(
        self, reason: str, only: bytes | None = None, seat: str | None = None
    ) -> list[tuple[bytes, dict]]:
        """Error replies (``interrupted``) for waiting requests: all of them, or one session's (``only``), or of those
        the ones that act for ``seat``."""
        cancelled = [
            w for w in self.waiters if (only is None or w.identity == only) and (seat is None or seat in w.seats)
        ]
        self.waiters = [w for w in self.waiters if w not in cancelled]
        for waiter in cancelled:
            for agent in waiter.seats:
                self.pending.pop(agent, None)
        if not self.waiters:
            self.deadline_at = None
        error = ProtocolError(INTERRUPTED, reason, "read the world again with observe, then act")
        replies = []
        for waiter in cancelled:
            if waiter.batch is not None:  # an act_batch fails once, at its first interrupted world
                batch = waiter.batch[0]
                batch.left -= 1
                if batch.failed:
                    continue
                batch.failed = True
            replies.append((waiter.identity, error.to_header(waiter.request_id)))
        return replies

    # ---- reading ----------------------------------------------------------------------------------------------

    def stats(self, now: float) -> dict:
        """What ``list`` shows of the world's activity: steps/s since the last look (at least 1 s apart), late
        fills, the last episodes' returns and the last step's rewards."""
        if self.block is not None:
            return self.block.stats(self.index, now)
        since, steps = self.rate_mark
        rate = (self.steps - steps) / (now - since) if since and now > since else 0.0
        if now - since >= 1.0:
            self.rate_mark = (now, self.steps)
        return {
            "steps_per_s": round(rate, 2),
            "late": self.late_fills,
            "returns": [round(r, 4) for r in self.recent_returns],
            "rewards": {a: float(r) for a, r in self.last_rewards.items()},
        }

    def render(self) -> np.ndarray:
        """The world as a (H, W, 3) uint8 picture."""
        if not self.renders:
            raise ProtocolError(
                BAD_REQUEST,
                f"world {self.world_id} does not render",
                "create it with 'render': true (its scenario must support rgb_array)",
            )
        frame = self.block.render(self.index) if self.block is not None else self.env.render()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise ValueError(f"render() gave a {frame.dtype} array of shape {frame.shape}, not (H, W, 3) uint8")
        return np.ascontiguousarray(frame[:, :, :3])

    def observation_reply(self, agents: list[str]) -> dict:
        self.refresh()
        return {
            "op": "observation",
            "world": self.world_id,
            "tick": self.tick,
            "episode": self.episode,
            "agents": self.live_agents,
            "obs": {a: to_wire(self.obs_spaces[a], self.obs[a]) for a in agents if a in self.obs},
            "infos": {a: plain(self.infos.get(a, {})) for a in agents if a in self.obs},
        }

    def state(self) -> np.ndarray:
        """The global state: the scenario's ``state()`` where it has one, else all observations concatenated."""
        if isinstance(getattr(self.env, "state_space", None), spaces.Space):
            return np.asarray(self.env.state(), dtype=self.state_space.dtype)
        if self.state_space is None:
            raise ProtocolError(BAD_REQUEST, f"world {self.world_id} has no global state", "its scenario has none")
        parts = []
        for agent in self.agents:
            space = self.obs_spaces[agent]
            value = self.obs.get(agent)
            parts.append(np.zeros(int(np.prod(space.shape))) if value is None else np.asarray(value).reshape(-1))
        return np.concatenate(parts).astype(self.state_space.dtype)


def plain(value: Any, depth: int = 0) -> Any:
    """A msgpack-safe copy of an info value: numpy made plain, unknown objects as their repr."""
    if depth > 8:
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 4096 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, depth + 1) for v in value]
    return repr(value)
