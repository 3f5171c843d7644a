"""The harness's side of the learner API: :class:`TrainingSession` (an ``api.Session``) and the worlds it hands out.

An algorithm's ``train(session)`` registers its policy and state, then loops over updates; everything else happens
here, so that no algorithm can get it wrong:

- :class:`TrainingWorlds` steps the worlds for the algorithm and counts every step, feeding the episode statistics
  (learners.episodes); under ``agora learners check`` it also checks every action against its space;
- :meth:`TrainingSession.begin_update` reseeds torch and the session's generator from (seed, rank, update) and
  resets the worlds at checkpoint boundaries, so that a resumed run repeats the uninterrupted one bit for bit;
- :meth:`TrainingSession.end_update` keeps the seats alive (heartbeats), checks the opponents, averages the
  algorithm's metrics over ranks and adds the harness's, checks that the ranks' parameters agree, writes metrics and
  checkpoints (learners.checkpoints' schema) and stops when the ranks agreed to.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from agora_marl.agents.batched import BatchResult, PendingStep
from agora_marl.envserver.protocol.spaces import check_value
from agora_marl.learners import mpi
from agora_marl.learners.api import Algorithm, Policy, Stateful
from agora_marl.learners.checkpoints import FORMAT, CheckpointError
from agora_marl.learners.config import Config
from agora_marl.learners.episodes import EpisodeStats
from agora_marl.learners.mpi.gradients import broadcast_parameters
from agora_marl.learners.mpi.tensors import check_in_sync
from agora_marl.learners.run import Run, TrainingStopped
from agora_marl.learners.selfplay import SelfPlayWorlds


class TrainingWorlds:
    """The worlds as an algorithm sees them (``api.Worlds``): its seats only, stepped, never reset by it.

    Args:
        inner: the rank's worlds (``BatchedWorlds``, or ``SelfPlayWorlds`` showing the learner's side).
        session: the session that counts the steps and keeps the statistics.
        state_granted: the results carry the global state (else ``state_space`` is None).
        check_actions: check every action against its space (``agora learners check``), with a message that says
            what the algorithm sent.
    """

    def __init__(self, inner: Any, session: TrainingSession, state_granted: bool, check_actions: bool = False):
        self.inner = inner
        self._session = session
        self._check_actions = check_actions
        self.possible_agents: list[str] = list(inner.possible_agents)
        self.observation_spaces = dict(inner.observation_spaces)
        self.action_spaces = dict(inner.action_spaces)
        self.state_space = inner.state_space if state_granted else None
        self.spec = inner.spec
        self.num_worlds: int = inner.num_worlds
        self.layout: str = inner.layout
        self.partial: bool = inner.partial

    def step(self, actions: dict[str, np.ndarray] | np.ndarray) -> BatchResult:
        """Step every world with the seats' actions (``api.Worlds.step``)."""
        every = slice(0, self.num_worlds)
        self._checked(actions, every)
        result = self.inner.step(actions)
        self._session.stepped(every, result)
        return result

    def step_async(self, actions: dict[str, np.ndarray] | np.ndarray, rows: slice | None = None) -> PendingStep:
        """Send one step of worlds ``rows`` without waiting (``api.Worlds.step_async``)."""
        rows = slice(0, self.num_worlds) if rows is None else rows
        self._checked(actions, rows)
        return self.inner.step_async(actions, rows)

    def step_wait(self, pending: PendingStep) -> BatchResult:
        """The result of a step sent with :meth:`step_async`."""
        result = self.inner.step_wait(pending)
        self._session.stepped(pending.rows, result)
        return result

    def _checked(self, actions: Any, rows: slice) -> None:
        if not self._check_actions:
            return
        name, count, seats = self._session.algorithm.name, rows.stop - rows.start, self.possible_agents
        fix = (
            f"fix: step the worlds with one value of each seat's action space per world: {{agent: ({count}, "
            f"*space.shape)}} for every seat of {seats}"
            + (f", or one ({count}, {len(seats)}, *space.shape) array" if self.layout == "stacked" else "")
        )
        if self.layout == "stacked":
            actions = np.asarray(actions)
            if actions.shape[:2] != (count, len(seats)):
                raise ValueError(f"{name} sent stacked actions of shape {actions.shape} for {count} worlds; {fix}")
            actions = {a: actions[:, j] for j, a in enumerate(seats)}
        if not isinstance(actions, Mapping) or set(actions) != set(seats):
            given = sorted(actions) if isinstance(actions, Mapping) else type(actions).__name__
            raise ValueError(f"{name} sent actions for {given}; {fix}")
        for agent, value in actions.items():
            try:
                check_value(self.action_spaces[agent], np.asarray(value), (count,), f"{agent}'s actions")
            except ValueError as exc:
                raise ValueError(
                    f"{name} sent {agent} actions of shape {np.shape(value)} for {count} worlds in "
                    f"{self.action_spaces[agent]} ({exc}); {fix}"
                ) from None


class TrainingSession:
    """One rank's training run as an algorithm sees it: implements ``api.Session`` (see learners.api for each
    member's contract).

    Args:
        algorithm: the algorithm instance being trained.
        config: the run's config.
        run: the run directory.
        worlds: the rank's worlds, opened by learners.training (self-play's, or served ones).
        device: the torch device.
        resumed: the latest checkpoint (checked), or None for a fresh run.
        selfplay: self-play's worlds (the same object as ``worlds``) in a self-play run.
        opponents: the processes playing the seats the learner leaves to others.
        check_actions: check every action (``agora learners check``).
    """

    def __init__(
        self,
        algorithm: Algorithm,
        config: Config,
        run: Run,
        worlds: Any,
        device: torch.device,
        resumed: dict[str, Any] | None = None,
        selfplay: SelfPlayWorlds | None = None,
        opponents: list[subprocess.Popen] | None = None,
        check_actions: bool = False,
    ):
        self.algorithm = algorithm
        self.config = config
        self.settings = config.algo_settings
        self.run = run
        self.device = device
        self.rank, self.ranks = mpi.rank(), mpi.size()
        self.total_steps = config.run.total_steps
        granted = algorithm.state != "never" and not worlds.partial
        self.worlds = TrainingWorlds(worlds, self, granted, check_actions)
        self.spec = worlds.spec
        self.seats = list(worlds.possible_agents)
        self.rng = np.random.default_rng(mpi.seed_for_rank(config.run.seed))
        self.selfplay = selfplay
        self.opponents = list(opponents or [])
        self.last_metrics: dict[str, float] = {}
        """The metrics of the last logged update (what ``train`` returns)."""
        self._stats = EpisodeStats(self.seats, worlds.observation_spaces, worlds.action_spaces, worlds.num_worlds)
        self._checkpoint = resumed
        self._step = int(resumed["step"]) if resumed else 0
        self._update = self._ended = int(resumed["update"]) if resumed else 0
        self._closed: dict[int, int] = {}  # update -> steps done when its rollout closed (the next one began)
        self._fresh_process = True
        self._policy: Policy | None = None
        self._shared: dict[str, Stateful] = {}
        self._per_rank: dict[str, Stateful] = {}
        self._resumed = False
        self._logged_at = (time.monotonic(), self._step)
        self._bar = None
        if config.run.progress and mpi.is_root():
            from tqdm import tqdm

            total = config.run.total_steps
            self._bar = tqdm(total=total, initial=min(self._step, total), unit="step", unit_scale=True)

    # -- what the algorithm reads ------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self._step

    @property
    def update(self) -> int:
        return self._update

    @property
    def done(self) -> bool:
        return self._step >= self.total_steps

    @property
    def resumed(self) -> bool:
        return self._resumed

    def stepped(self, rows: slice, result: BatchResult) -> None:
        """Count a step of worlds ``rows`` (on every rank alike) and add it to the statistics (TrainingWorlds)."""
        self._step += (rows.stop - rows.start) * self.ranks
        self._stats.observe(self._update, rows, result)

    # -- the algorithm's calls ---------------------------------------------------------------------------------

    def register(self, policy: Policy, per_rank: Mapping[str, Stateful] | None = None, **shared: Stateful) -> None:
        """See ``api.Session.register``."""
        if self._policy is not None:
            raise RuntimeError("register() is called once, with every stateful object")
        if self._update != self._ended or self._closed:
            raise RuntimeError("register() before the first begin_update()")
        objects = {"policy": policy, **shared, **dict(per_rank or {})}
        for name, obj in objects.items():
            if not isinstance(obj, Stateful):
                raise TypeError(f"register(): {name} = {obj!r} has no state_dict/load_state_dict to checkpoint")
        clash = set(shared) & set(per_rank or {})
        if clash:
            raise ValueError(f"register(): {sorted(clash)} are named both shared and per_rank")
        self._policy, self._shared, self._per_rank = policy, dict(shared), dict(per_rank or {})
        state = self._checkpoint
        if state is None:
            for obj in [policy, *shared.values()]:
                if isinstance(obj, nn.Module):
                    broadcast_parameters(obj)
        else:
            self._restore(state)
        if self.selfplay is not None:
            make = self.algorithm.make_policy
            first = self.selfplay.start(
                policy,
                None if state is None else state.get("selfplay"),
                lambda: make(self.spec, self.seats, self.settings),
            )
            if first:
                self.run.log(0, 0, first)

    def begin_update(self) -> BatchResult | None:
        """See ``api.Session.begin_update``."""
        if self._policy is None:
            raise RuntimeError(f"{self.algorithm.name}: call session.register(policy, ...) before the first update")
        if self.done:
            raise RuntimeError(f"{self.algorithm.name}: the run is done (session.done): begin no more updates")
        previous = self._update
        if previous != self._ended:  # it ends later (an overlapped update): remember the steps its rollout made
            self._closed[previous] = self._step
        boundary = self._fresh_process or previous % self.config.run.checkpoint_every == 0
        if boundary and self._ended != previous:
            raise RuntimeError(
                f"{self.algorithm.name}: update {previous} ends at a checkpoint boundary: end it (session.end_update) "
                "before beginning the next; ask session.ends_at_boundary(update) before overlapping"
            )
        self._update += 1
        if not boundary:
            return None
        self._fresh_process = False
        seeds = np.random.SeedSequence([self.config.run.seed, self.rank, previous]).generate_state(3)
        torch.manual_seed(int(seeds[1]))
        self.rng.bit_generator.state = np.random.PCG64(int(seeds[2])).state
        self._stats.reset()
        return self.worlds.inner.reset(seed=int(seeds[0]) & 0x3FFFFFFF)

    def ends_at_boundary(self, update: int) -> bool:
        """See ``api.Session.ends_at_boundary``."""
        return update % self.config.run.checkpoint_every == 0 or self._steps_after(update) >= self.total_steps

    def logs(self, update: int | None = None) -> bool:
        """See ``api.Session.logs``."""
        update = self._update if update is None else update
        return self.run.logs_at(self._steps_after(update), update)

    def end_update(self, metrics: Mapping[str, float] | None = None, update: int | None = None) -> None:
        """See ``api.Session.end_update``."""
        update = self._update if update is None else update
        if update != self._ended + 1 or update > self._update:
            raise RuntimeError(
                f"{self.algorithm.name}: end_update({update}): updates end in order, each once, after they began "
                f"(the last ended is {self._ended}, the last begun {self._update})"
            )
        step = self._steps_after(update)
        self._check_opponents()
        self.worlds.inner.heartbeat()  # the worlds hear nothing from this learner while it learns
        rs = self.config.run
        if update % rs.sync_every == 0 or step >= self.total_steps:
            check_in_sync(self._synced_tensors())
        out = self.selfplay.end_update(update) if self.selfplay is not None else {}
        logged = self.run.logs_at(step, update)
        if logged:
            out = {**self._reduced(dict(metrics or {})), **self._stats.metrics(update), **out}
            now = time.monotonic()
            out["steps_per_s"] = (step - self._logged_at[1]) / max(now - self._logged_at[0], 1e-9)
            self._logged_at = (now, step)
            self.last_metrics = out
        end = self.run.end_update(step, update, out)
        self._ended = update
        self._closed.pop(update, None)
        if self._bar is not None:
            self._bar.update(min(step, self._bar.total) - self._bar.n)
            if "return_recent" in self.last_metrics:
                self._bar.set_postfix_str(f"return {self.last_metrics['return_recent']:.1f}", refresh=False)
        if end.checkpoint:
            self._save(step, update)
        if end.stop:
            raise TrainingStopped(step, update, end.reason)

    # -- the harness's own ----------------------------------------------------------------------------------

    def finished(self) -> None:
        """Called when ``train`` returns: it must have trained the whole budget, every update ended."""
        if not self.done or self._ended != self._update:
            raise RuntimeError(
                f"{self.algorithm.name}.train returned at step {self._step} of {self.total_steps}, with update "
                f"{self._update} begun and {self._ended} ended: loop until session.done and end every update"
            )

    def close(self) -> None:
        """Close the progress bar (learners.training closes the worlds)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _steps_after(self, update: int) -> int:
        """Steps done when ``update``'s rollout closed (now, for the update being collected)."""
        return self._closed.get(update, self._step)

    def _check_opponents(self) -> None:
        for process in self.opponents:
            if process.poll() is not None:
                env = self.config.env
                raise RuntimeError(
                    f"the opponent process ({env.opponent} in {self.worlds.inner.other_agents}) exited with "
                    f"status {process.returncode}: see its error above; the worlds would go on with its seats filled"
                )

    def _synced_tensors(self) -> list[torch.Tensor]:
        """The floating parameters and buffers of every registered module: identical on every rank."""
        modules = [obj for obj in [self._policy, *self._shared.values()] if isinstance(obj, nn.Module)]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        return [t for t in tensors if t.is_floating_point()]

    def _reduced(self, metrics: dict[str, float]) -> dict[str, float]:
        """The algorithm's metrics averaged over ranks (one allreduce; every rank must report the same keys)."""
        keys = sorted(metrics)
        if self.ranks > 1:
            seen = mpi.allgather_object(keys)
            if any(k != keys for k in seen):
                raise RuntimeError(
                    f"{self.algorithm.name}: the ranks reported different metrics {seen}: report the same keys on "
                    "every rank (the harness averages them)"
                )
        values = np.array([float(metrics[k]) for k in keys], np.float64)
        return dict(zip(keys, (float(v) for v in mpi.allreduce_mean(values)), strict=True)) if keys else {}

    def _restore(self, state: dict[str, Any]) -> None:
        self._policy.load_state_dict(state["policy"])
        missing = sorted(set(self._shared) - set(state["state"]))
        if missing:
            raise CheckpointError(
                f"the checkpoint holds no {missing} (it holds {sorted(state['state'])}): "
                f"{self.algorithm.name} registers other objects than the run that wrote it"
            )
        for name, obj in self._shared.items():
            obj.load_state_dict(state["state"][name])
        saved = state["per_rank"]
        if self._per_rank and (saved is None or len(saved) != self.ranks):
            mpi.log(
                f"{self.algorithm.name}: the checkpoint holds per-rank state ({sorted(self._per_rank)}) of "
                f"{0 if saved is None else len(saved)} ranks, this run has {self.ranks}: it starts empty"
            )
        elif self._per_rank:
            for name, obj in self._per_rank.items():
                obj.load_state_dict(saved[self.rank][name])
        self._stats.load_state_dict(state["harness"])
        self._resumed = True

    def _save(self, step: int, update: int) -> None:
        """Write the checkpoint of ``update`` (collective: per-rank state is gathered to the writer)."""
        per_rank = None
        if self._per_rank:
            per_rank = mpi.gather_object({name: obj.state_dict() for name, obj in self._per_rank.items()})
        if not self.run.writer:
            return
        cls = type(self.algorithm)
        state = {
            "format": FORMAT,
            "step": step,
            "update": update,
            "algorithm": {
                "name": cls.name,
                "reference": self.config.algo,
                "settings": dataclasses.asdict(self.settings),
            },
            "spec": self.spec.to_wire(),
            "seats": list(self.seats),
            "policy": self._policy.state_dict(),
            "state": {name: obj.state_dict() for name, obj in self._shared.items()},
            "per_rank": per_rank,
            "harness": self._stats.state_dict(),
            "rng": {"seed": self.config.run.seed, "reseeded_at": update},
        }
        if self.selfplay is not None:
            state["selfplay"] = self.selfplay.state_dict()
        self.run.save_checkpoint(state)
