"""Self-play: the learner trains one side of a symmetric world while snapshots of itself, kept in a pool, play the
other side (``env.opponent = "self-play"``, ``env.seats`` = the learner's side, settings in ``[selfplay]``).

The learner holds every seat of its K worlds (one ``step_batch`` per server per step, the fast path) and shows its
algorithm only its own side, as :class:`~agora_marl.agents.batched.BatchedWorlds` with partial seats would:
:class:`SelfPlayWorlds` has the same surface. The other side's seats are played in process: each world is assigned
one snapshot of the pool for a whole episode, and a step runs one forward pass per snapshot in use, over the worlds
assigned to it. A world's next opponent is drawn from the pool when its episode ends.

The i-th seat of the other side plays as the i-th seat of the learner's side would (the same spaces, checked), so
a snapshot is the parameters of the learner's acting policy and nothing else; it plays through a policy that the
algorithm's ``make_policy`` builds (any algorithm that declares ``self_play``). The outcome of an episode compares the two sides'
returns (the sum of their seats' rewards): higher wins, equal draws. In a zero-sum world such as coin_duel_v0 that
is the sign of the learner's return.

:class:`SnapshotPool` is the bookkeeping: snapshots added every ``snapshot_every`` updates (the first is the
untrained learner), at most ``capacity`` (the oldest leaves), each with the learner's games and points against it
(a win 1, a draw 1/2), summed over all ranks at the end of every update so that every rank holds the same pool;
and the sampling of opponents (``latest``, ``uniform``, or ``prioritised`` by the learner's smoothed win rate p
against each, weight ``(1 - p) ** priority_power``, as prioritised fictitious self-play does).

Resume is exact: the pool (snapshots, results, counters and its generator) goes into every checkpoint, and a reset
of the worlds with a seed (the harness resets at every checkpoint boundary, with a seed of the rank and the update)
reseeds the opponent sampler from that seed and draws every world's opponent anew. The snapshots' own actions come
from torch's generator, which the harness reseeds at the same boundaries.

Every ``eval_every`` updates (and before training) the learner plays ``eval_opponent`` greedily in worlds of its own,
reset with the same seed every time: ``selfplay/eval_win_rate`` is the measure of progress that self-play's own
win rate (against ever stronger snapshots) cannot be.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from agora_marl.agents.batched import BatchedWorlds, BatchResult, resolve_seats
from agora_marl.agents.policies import named_policy
from agora_marl.envserver.protocol.vocabulary import LAYOUT_STACKED
from agora_marl.learners import mpi
from agora_marl.learners.config import Config, SelfPlaySettings
from agora_marl.learners.trained import load_run_policy

if TYPE_CHECKING:
    from agora_marl.agents.batched import PendingStep

#: ``env.opponent`` for self-play.
SELF_PLAY = "self-play"
SAMPLINGS = ("latest", "uniform", "prioritised")
#: The evaluation worlds' seed (rank r adds its offset, learners.mpi.seed_for_rank).
EVAL_SEED = 2_000_000


class SnapshotPool:
    """The learner's snapshots and its results against each; draws the opponents of new episodes.

    Args:
        settings: the ``[selfplay]`` settings (capacity, sampling, priority_power).
        seed: the sampler's first seed (a seeded reset of :class:`SelfPlayWorlds` reseeds it).

    Raises:
        ValueError: settings out of range (the message says which).
    """

    def __init__(self, settings: SelfPlaySettings, seed: int = 0):
        if settings.sampling not in SAMPLINGS:
            raise ValueError(f"selfplay.sampling {settings.sampling!r} is not one of {', '.join(SAMPLINGS)}")
        if settings.capacity < 1 or settings.snapshot_every < 1 or settings.priority_power < 0:
            raise ValueError("selfplay needs capacity >= 1, snapshot_every >= 1 and priority_power >= 0")
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.ids: list[int] = []
        """The snapshots' ids, oldest first (ids count every snapshot ever added)."""
        self.updates: list[int] = []
        """The update after which each snapshot was taken (0: before training)."""
        self.actors: list[dict[str, torch.Tensor]] = []
        """Each snapshot's parameters (a state dict on the CPU)."""
        self.games = np.zeros(0)
        """Episodes the learner finished against each snapshot, over all ranks."""
        self.points = np.zeros(0)
        """The learner's points against each: 1 a win, 1/2 a draw."""
        self._pending = np.zeros((0, 2))  # this rank's games and points since the last sync, per snapshot

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, update: int, actors: dict[str, torch.Tensor]) -> int:
        """Add a snapshot of ``actors`` (copied to the CPU), taken after ``update``; the oldest leaves when the pool is
        full. Every rank adds the same snapshots at the same updates. Returns its id."""
        new = (self.ids[-1] + 1) if self.ids else 0
        self.ids.append(new)
        self.updates.append(int(update))
        self.actors.append({k: v.detach().to("cpu", copy=True) for k, v in actors.items()})
        self.games, self.points = np.append(self.games, 0.0), np.append(self.points, 0.0)
        self._pending = np.vstack([self._pending, np.zeros((1, 2))])
        if len(self.ids) > self.settings.capacity:
            for name in ("ids", "updates", "actors"):
                getattr(self, name).pop(0)
            self.games, self.points, self._pending = self.games[1:], self.points[1:], self._pending[1:]
        return new

    def win_rates(self) -> np.ndarray:
        """The learner's smoothed win rate against each snapshot: ``(points + 1) / (games + 2)`` (1/2 unplayed)."""
        return (self.points + 1.0) / (self.games + 2.0)

    def probabilities(self) -> np.ndarray:
        """The chance that each snapshot plays the next episode drawn."""
        n, sampling = len(self.ids), self.settings.sampling
        if sampling == "latest":
            return np.eye(n)[-1]
        if sampling == "uniform":
            return np.full(n, 1.0 / n)
        weights = (1.0 - self.win_rates()) ** self.settings.priority_power
        return weights / weights.sum()

    def sample(self, count: int) -> np.ndarray:
        """The ids of ``count`` opponents, drawn independently."""
        assert self.ids, "the pool holds the untrained learner from the start (SelfPlayWorlds.start)"
        rows = self.rng.choice(len(self.ids), size=count, p=self.probabilities())
        return np.asarray(self.ids)[rows]

    def reseed(self, seed: int) -> None:
        """Restart the sampler from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def record(self, ids: np.ndarray, points: np.ndarray) -> None:
        """Results of episodes this rank finished (the learner's points against the snapshots ``ids``); a snapshot
        that left the pool meanwhile is not counted. They count in the sampling after :meth:`sync`."""
        rows = {snapshot: row for row, snapshot in enumerate(self.ids)}
        for snapshot, score in zip(ids.tolist(), points.tolist(), strict=True):
            if snapshot in rows:
                self._pending[rows[snapshot]] += (1.0, score)

    def sync(self) -> None:
        """Add every rank's pending results to the pool (collective: every rank, once per update)."""
        total = mpi.allreduce_sum(self._pending.reshape(-1)).reshape(-1, 2) if len(self.ids) else self._pending
        self.games, self.points = self.games + total[:, 0], self.points + total[:, 1]
        self._pending[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The pool as checkpointable data (synced: no pending results)."""
        assert not self._pending.any(), "sync() before checkpointing: pending results would be lost"
        return {
            "ids": list(self.ids),
            "updates": list(self.updates),
            "actors": [dict(a) for a in self.actors],
            "games": self.games.tolist(),
            "points": self.points.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave (the settings stay this pool's)."""
        self.ids, self.updates = [int(i) for i in state["ids"]], [int(u) for u in state["updates"]]
        self.actors = [{k: v.to("cpu") for k, v in a.items()} for a in state["actors"]]
        self.games, self.points = np.asarray(state["games"], float), np.asarray(state["points"], float)
        self._pending = np.zeros((len(self.ids), 2))
        self.rng.bit_generator.state = state["rng"]


class SelfPlayWorlds:
    """K worlds whose every seat the learner holds, shown to its algorithm as its own side's seats only, with the
    pool's snapshots playing the other side (see the module docstring). It has the surface of a partial-seat
    :class:`BatchedWorlds` that an algorithm uses (``possible_agents``, spaces, ``layout``, ``reset``, ``step``...).

    Args:
        worlds: K worlds of a symmetric scenario, every seat held (the learner opens them).
        config: the run's config: ``env.seats`` is the learner's side, ``[selfplay]`` the pool's settings.
        addresses: the servers, for the evaluation worlds.

    Raises:
        ValueError: no ``env.seats``, sides that differ in size or spaces, a bad ``[selfplay]`` setting or
            evaluation opponent.
    """

    def __init__(self, worlds: BatchedWorlds, config: Config, addresses: list[str]):
        env, s = config.env, config.selfplay
        if not env.seats:
            raise ValueError("self-play needs env.seats: the learner's side, e.g. env.seats=player_0")
        self.inner = worlds
        self.config = config
        all_agents = worlds.possible_agents
        self.possible_agents: list[str] = resolve_seats(all_agents, env.seats)
        self.other_agents: list[str] = [a for a in all_agents if a not in self.possible_agents]
        if len(self.other_agents) != len(self.possible_agents):
            raise ValueError(
                f"self-play needs two sides of one size: env.seats gives the learner {self.possible_agents}, which "
                f"leaves {self.other_agents} to its snapshots"
            )
        self._pairs = list(zip(self.possible_agents, self.other_agents, strict=True))  # who plays as whom
        for mine, other in self._pairs:
            same = (worlds.observation_spaces[mine], worlds.action_spaces[mine]) == (
                worlds.observation_spaces[other],
                worlds.action_spaces[other],
            )
            if not same:
                raise ValueError(
                    f"self-play needs a symmetric world: {other} plays as {mine} would, but their spaces differ"
                )
        self._mine = [all_agents.index(a) for a in self.possible_agents]
        self._theirs = [all_agents.index(a) for a in self.other_agents]
        self.observation_spaces = {a: worlds.observation_spaces[a] for a in self.possible_agents}
        self.action_spaces = {a: worlds.action_spaces[a] for a in self.possible_agents}
        self.state_space = worlds.state_space
        self.layout, self.num_worlds, self.spec = worlds.layout, worlds.num_worlds, worlds.spec
        self.partial = False  # the learner holds every seat: a global state is its to read
        self.pool = SnapshotPool(s, seed=mpi.seed_for_rank(config.run.seed))
        self.opponents = np.zeros(self.num_worlds, np.int64)
        """The snapshot id playing the other side of each world's current episode."""
        self._policy: nn.Module | None = None
        self._make_player: Callable[[], nn.Module] | None = None
        self._players: dict[int, nn.Module] = {}  # snapshot id -> a policy of the learner's kind with its weights
        self._obs: Any = None  # every seat's latest observations, in the worlds' layout: the snapshots' inputs
        self._returns = np.zeros((self.num_worlds, 2))  # each side's return in the current episodes
        self._results = np.zeros(3)  # wins, draws, games against the pool since the last end of update
        self._eval_worlds: BatchedWorlds | None = None
        if s.eval_every < 0 or s.eval_episodes < 1:
            raise ValueError("selfplay needs eval_every >= 0 (0: no evaluations) and eval_episodes >= 1")
        if s.eval_every:
            self._eval_policies = self._eval_opponent(s.eval_opponent)
            self._eval_worlds = BatchedWorlds(
                addresses,
                env.scenario,
                env.config,
                num_worlds=min(s.eval_episodes, env.num_worlds),
                seed=mpi.seed_for_rank(EVAL_SEED),
                timeout_s=env.timeout_s,
                server_key=env.server_key or None,
                client_key=env.client_key or None,
            )

    def _eval_opponent(self, name: str) -> dict[str, Any]:
        try:
            return {
                a: named_policy(
                    name, self.inner.observation_spaces[a], self.inner.action_spaces[a], a, run_loader=load_run_policy
                )
                for a in self.other_agents
            }
        except ValueError as exc:
            raise ValueError(
                f"selfplay.eval_opponent {name!r} cannot play {self.other_agents}: {exc}; name another "
                "(random, a run directory...) or set selfplay.eval_every=0"
            ) from None

    # -- the algorithm's side ------------------------------------------------------------------------------

    def start(
        self, policy: nn.Module, state: dict[str, Any] | None, make_player: Callable[[], nn.Module]
    ) -> dict[str, float]:
        """Begin with the learner's acting ``policy`` (its parameters are what snapshots copy): restore the pool
        from a checkpoint's ``state``, or, for a fresh run, add the untrained learner and evaluate it. Returns the
        metrics of that first evaluation (empty when resumed or without evaluations).

        Args:
            make_player: builds an untrained policy of the learner's kind (the algorithm's ``make_policy``), which a
                snapshot's parameters are loaded into.
        """
        self._policy, self._make_player = policy, make_player
        if state is not None:
            self.pool.load_state_dict(state)
            return {}
        self.pool.add(0, policy.state_dict())
        return self._evaluation() if self._eval_worlds is not None else {}

    def reset(self, seed: int | None = None) -> BatchResult:
        """Reset every world (``seed`` as for :meth:`BatchedWorlds.reset`; it also reseeds the opponent sampler) and
        draw each world's opponent; the learner's side of the first observations."""
        full = self.inner.reset(seed=seed)
        if seed is not None:
            self.pool.reseed(seed)
        self.opponents = self.pool.sample(self.num_worlds)
        self._returns[:] = 0.0
        self._obs = _copy(full.obs)
        return self._side(full)

    def step(self, actions: dict[str, Any] | np.ndarray) -> BatchResult:
        """Step every world with the learner's ``actions`` (its side, in the worlds' layout) and the snapshots'; the
        learner's side of the result. Episodes that ended are scored, and their worlds get new opponents."""
        every = slice(0, self.num_worlds)
        return self._stepped(self.inner.step(self._with_snapshots(actions, every)), every)

    def step_async(self, actions: dict[str, Any] | np.ndarray, rows: slice | None = None) -> PendingStep:
        """Send one step of the worlds in ``rows`` (default all), as :meth:`BatchedWorlds.step_async`: ``actions``
        are the learner's side's for those rows; the snapshots' are added here."""
        rows = slice(0, self.num_worlds) if rows is None else rows
        return self.inner.step_async(self._with_snapshots(actions, rows), rows)

    def step_wait(self, pending: PendingStep) -> BatchResult:
        """The learner's side of a step sent with :meth:`step_async`, scored as by :meth:`step`."""
        return self._stepped(self.inner.step_wait(pending), pending.rows)

    def _with_snapshots(self, actions: dict[str, Any] | np.ndarray, rows: slice) -> dict[str, Any] | np.ndarray:
        """Every seat's actions in ``rows``: the learner's, and the snapshots' for the other side."""
        assert self._obs is not None, "reset() before the first step"
        theirs = self._snapshot_actions(rows)
        if self.layout != LAYOUT_STACKED:
            return {**actions, **theirs}
        first = next(iter(theirs.values()))
        full = np.empty((len(first), len(self._mine) * 2, *first.shape[1:]), first.dtype)
        full[:, self._mine] = actions
        full[:, self._theirs] = np.stack([theirs[a] for a in self.other_agents], 1)
        return full

    def _stepped(self, full: BatchResult, rows: slice) -> BatchResult:
        """Score the episodes that ended in ``rows``, draw their worlds' next opponents, and keep every seat's
        observations; the learner's side of ``full``."""
        returns = self._returns[rows]  # a view: rows is a slice
        returns += np.stack([full.rewards[:, self._mine].sum(1), full.rewards[:, self._theirs].sum(1)], 1)
        over = np.flatnonzero(full.episode_over)
        if len(over):
            mine, theirs = returns[over, 0], returns[over, 1]
            points = np.where(mine > theirs, 1.0, np.where(mine == theirs, 0.5, 0.0))
            worlds = rows.start + over
            self.pool.record(self.opponents[worlds], points)
            self._results += ((points == 1.0).sum(), (points == 0.5).sum(), len(over))
            self.opponents[worlds] = self.pool.sample(len(over))
            returns[over] = 0.0
        if isinstance(full.obs, dict):
            for agent, value in full.obs.items():
                self._obs[agent][rows] = value
        else:
            self._obs[rows] = full.obs
        return self._side(full)

    def _snapshot_actions(self, rows: slice) -> dict[str, np.ndarray]:
        """The other side's actions in ``rows``: one forward pass per snapshot in use, over the worlds it plays."""
        stacked = self.layout == LAYOUT_STACKED
        observed = {
            other: (self._obs[rows, j] if stacked else self._obs[other][rows])
            for other, j in zip(self.other_agents, self._theirs, strict=True)
        }
        opponents = self.opponents[rows]
        out: dict[str, np.ndarray] = {}
        for snapshot in np.unique(opponents).tolist():
            where = np.flatnonzero(opponents == snapshot)
            seen = {mine: observed[other][where] for mine, other in self._pairs}
            acted = self._player(snapshot).act(seen, greedy=False)
            for mine, other in self._pairs:
                if other not in out:
                    out[other] = np.empty((len(opponents), *acted[mine].shape[1:]), acted[mine].dtype)
                out[other][where] = acted[mine]
        return out

    def _player(self, snapshot: int) -> nn.Module:
        if snapshot not in self._players:
            assert self._make_player is not None, "start() gives the learner's policy before the first reset"
            device = next(self._policy.parameters(), torch.zeros(())).device
            with torch.random.fork_rng(devices=[]):  # building one draws initial weights: not from the run's stream
                player = self._make_player()
            player = player.to(device).requires_grad_(False)
            player.load_state_dict(self.pool.actors[self.pool.ids.index(snapshot)])
            self._players[snapshot] = player
        return self._players[snapshot]

    def _side(self, full: BatchResult) -> BatchResult:
        """The learner's seats of a full result, as a partial holder would get them."""

        def mine(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, dict):
                return {a: value[a] for a in self.possible_agents}
            return value[:, self._mine]

        return BatchResult(
            obs=mine(full.obs),
            alive=full.alive[:, self._mine],
            rewards=None if full.rewards is None else full.rewards[:, self._mine],
            terminated=None if full.terminated is None else full.terminated[:, self._mine],
            truncated=None if full.truncated is None else full.truncated[:, self._mine],
            episode_over=full.episode_over,
            final_obs=mine(full.final_obs),
            state=full.state,
            final_state=full.final_state,
        )

    def heartbeat(self) -> None:
        """Keep the seats alive through the learner's update."""
        self.inner.heartbeat()
        if self._eval_worlds is not None:
            self._eval_worlds.heartbeat()

    # -- the end of an update --------------------------------------------------------------------------------

    def end_update(self, update: int) -> dict[str, float]:
        """The end of ``update`` (collective): sum the results over the ranks, add a snapshot when one is due,
        evaluate when due. Returns the metrics: ``selfplay/win_rate`` and ``selfplay/draw_rate`` against the pool
        in the episodes that ended during the update, ``selfplay/pool_size``, and at evaluations
        ``selfplay/eval_win_rate`` and ``selfplay/eval_draw_rate``."""
        s = self.config.selfplay
        self.pool.sync()
        wins, draws, games = mpi.allreduce_sum(self._results)
        self._results[:] = 0.0
        metrics: dict[str, float] = {}
        if games:
            metrics.update({"selfplay/win_rate": wins / games, "selfplay/draw_rate": draws / games})
        if update % s.snapshot_every == 0:
            self.pool.add(update, self._policy.state_dict())
            self._players = {k: v for k, v in self._players.items() if k in self.pool.ids or k in self.opponents}
        metrics["selfplay/pool_size"] = float(len(self.pool))
        if s.eval_every and update % s.eval_every == 0:
            metrics.update(self._evaluation())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The pool, for the checkpoint (after :meth:`end_update`)."""
        return self.pool.state_dict()

    def _evaluation(self) -> dict[str, float]:
        """The learner, greedy, against ``eval_opponent`` in the evaluation worlds (collective)."""
        worlds, s = self._eval_worlds, self.config.selfplay
        quota = math.ceil(s.eval_episodes / worlds.num_worlds)
        result = worlds.reset(seed=mpi.seed_for_rank(EVAL_SEED))
        played = np.zeros(worlds.num_worlds, np.int64)
        returns = np.zeros((worlds.num_worlds, 2))
        totals = np.zeros(3)  # wins, draws, games
        deadline = time.monotonic() + self.config.env.timeout_s
        while (played < quota).any():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"a self-play evaluation did not finish {s.eval_episodes} episodes in env.timeout_s="
                    f"{self.config.env.timeout_s} s: lower selfplay.eval_episodes or raise env.timeout_s"
                )
            actions = self._policy.act({a: result.obs[a] for a in self.possible_agents}, greedy=True)
            for a, policy in self._eval_policies.items():
                actions[a] = np.stack([np.asarray(policy(o)) for o in result.obs[a]])
            result = worlds.step(actions)
            returns += np.stack([result.rewards[:, self._mine].sum(1), result.rewards[:, self._theirs].sum(1)], 1)
            for k in np.flatnonzero(result.episode_over & (played < quota)).tolist():
                mine, theirs = returns[k]
                totals += (mine > theirs, mine == theirs, 1)
            played += result.episode_over
            returns[result.episode_over] = 0.0
        wins, draws, games = mpi.allreduce_sum(totals)
        return {"selfplay/eval_win_rate": wins / games, "selfplay/eval_draw_rate": draws / games}

    def close(self) -> None:
        """Close the worlds, the evaluation's too."""
        if self._eval_worlds is not None:
            self._eval_worlds.close()
        self.inner.close()


def _copy(obs: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray] | np.ndarray:
    if isinstance(obs, dict):
        return {a: np.array(v) for a, v in obs.items()}
    return np.array(obs)
