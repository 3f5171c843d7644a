"""Episode statistics of the learner's seats, kept by the harness from every step the algorithm takes.

Per world: the running return of the current episode (the sum over the learner's seats of their rewards, and per
team) and its length. An episode that ends adds to the totals of the update being collected when it ended; at a
logged update the totals of every update since the last logged one are summed over all ranks with one allreduce
and become the metrics:

- ``return``: the mean return of those episodes; ``return/<team>`` per team where the seats form several
  (learners.policy.form_teams: name prefix and spaces);
- ``episode_length``, and ``episodes``: the count since the run began;
- ``return_recent``: the mean return over the last logged updates that hold at least 100 episodes (smoother, and
  defined even at an update where no episode ended);
- with partial seats, ``opponent_late`` / ``own_late``: the fraction of the other seats' and of the learner's own
  seat-steps that the worlds filled at their deadline.

A reset of the worlds (a checkpoint boundary) drops the unfinished episodes. What persists across updates (the
episode count, the recent window) is the same on every rank and travels in the checkpoint.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.agents.batched import BatchResult
from agora_marl.learners import mpi
from agora_marl.learners.policy import form_teams

#: Episodes the ``return_recent`` window spans at least.
RECENT_EPISODES = 100


class EpisodeStats:
    """Running returns of K worlds and the finished episodes' totals per update (see the module docstring).

    Args:
        seats: the learner's seats (the worlds' columns).
        observation_spaces, action_spaces: theirs (they shape the teams).
        num_worlds: K.
    """

    def __init__(
        self,
        seats: list[str],
        observation_spaces: dict[str, spaces.Space],
        action_spaces: dict[str, spaces.Space],
        num_worlds: int,
    ):
        teams = form_teams(seats, observation_spaces, action_spaces, "team")
        self.teams = [name for name, _ in teams]
        self._columns = [[seats.index(a) for a in agents] for _, agents in teams]
        self._num_worlds = num_worlds
        self._running = np.zeros((num_worlds, 1 + len(teams)))  # the return, then each team's
        self._lengths = np.zeros(num_worlds)
        # Per update: episodes, return sum, each team's, length sum, opponent_late and own_late weighted, weight.
        self._width = 1 + 1 + len(teams) + 1 + 3
        self._pending: dict[int, np.ndarray] = {}
        self.episodes = 0
        """Episodes finished over all ranks up to the last logged update."""
        self._recent: deque[tuple[float, float]] = deque()  # (episodes, return sum) per logged update

    def reset(self) -> None:
        """The worlds were reset: their unfinished episodes are forgotten."""
        self._running[:] = 0.0
        self._lengths[:] = 0.0

    def observe(self, update: int, rows: slice, result: BatchResult) -> None:
        """Add one step of worlds ``rows`` (``result`` holds those rows) to the update being collected."""
        running = self._running[rows]  # a view: rows is a slice
        rewards = result.rewards
        running[:, 0] += rewards.sum(1)
        for i, columns in enumerate(self._columns):
            running[:, 1 + i] += rewards[:, columns].sum(1)
        self._lengths[rows] += 1
        totals = self._pending.get(update)
        if totals is None:
            totals = self._pending[update] = np.zeros(self._width)
        over = np.flatnonzero(result.episode_over)
        if len(over):
            totals[0] += len(over)
            totals[1 : 2 + len(self._columns)] += running[over].sum(0)
            totals[-4] += self._lengths[rows][over].sum()
            running[over] = 0.0
            self._lengths[rows.start + over] = 0.0
        if result.opponent_late is not None:
            weight = (rows.stop - rows.start) / self._num_worlds
            totals[-3:] += (result.opponent_late * weight, result.own_late * weight, weight)

    def metrics(self, update: int) -> dict[str, float]:
        """The metrics of the episodes of every update up to ``update`` not reported yet, over all ranks.
        Collective: every rank, at every logged update."""
        local = np.zeros(self._width)
        for done in [u for u in self._pending if u <= update]:
            local += self._pending.pop(done)
        totals = mpi.allreduce_sum(local)
        count = float(totals[0])
        self.episodes += int(count)
        metrics = {"episodes": float(self.episodes)}
        if count:
            metrics["return"] = float(totals[1] / count)
            if len(self.teams) > 1:
                metrics.update({f"return/{t}": float(totals[2 + i] / count) for i, t in enumerate(self.teams)})
            metrics["episode_length"] = float(totals[-4] / count)
            self._recent.append((count, float(totals[1])))
            while len(self._recent) > 1 and sum(c for c, _ in self._recent) - self._recent[0][0] >= RECENT_EPISODES:
                self._recent.popleft()
        if self._recent:
            metrics["return_recent"] = sum(s for _, s in self._recent) / sum(c for c, _ in self._recent)
        if totals[-1] > 0:
            metrics["opponent_late"] = float(totals[-3] / totals[-1])
            metrics["own_late"] = float(totals[-2] / totals[-1])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """What persists across updates (the same on every rank after :meth:`metrics`)."""
        return {"episodes": self.episodes, "recent": [list(pair) for pair in self._recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self._recent = deque((float(c), float(s)) for c, s in state["recent"])
