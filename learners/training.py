"""What every algorithm's ``train`` shares: threads and device, the worlds, resuming, the progress bar, and the end
of each update (log, checkpoint, stop).

An algorithm's ``train(config, run, addresses)`` is :func:`train_in_worlds` around its own loop, which receives a
:class:`Training` and, after every update, calls :meth:`Training.end_update`: that writes the metrics when the update
is a logged one, checkpoints when the run says so (every ``run.checkpoint_every`` updates, the last, and before a
stop), and raises :class:`~agora_marl.learners.run.TrainingStopped` when the ranks agreed to stop
(:meth:`Run.stop_on <agora_marl.learners.run.Run.stop_on>`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.agents.client import ServerError
from agora_marl.agents.policies import named_policy
from agora_marl.learners import mpi
from agora_marl.learners.config import Config
from agora_marl.learners.mpi.cuda import select_device
from agora_marl.learners.policy import load_run_policy
from agora_marl.learners.rendezvous import (
    EXTERNAL,
    WORLDS_GONE,
    GroupMismatch,
    check_rendezvous,
    group_name,
    join_group_worlds,
    wait_for_external,
)
from agora_marl.learners.run import Run, TrainingStopped, UpdateEnd
from agora_marl.learners.selfplay import SELF_PLAY, SelfPlayWorlds


def torch_threads(config: Config) -> int:
    """The torch intra-op threads this rank trains with (at least 1).

    ``run.threads`` when positive. For 0 (the default): ``OMP_NUM_THREADS`` when set, else
    :func:`learners.mpi.fair_threads` counting the env servers that ``agora train`` starts when the config names none
    (``env.servers``, ``env.servers_per``). The config keeps its 0, so that a run resumed on other hardware finds its
    share anew. Not collective (the node's CPU affinities were exchanged when MPI started).
    """
    if config.run.threads > 0:
        return config.run.threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    env, starts = config.env, 0.0
    if not env.connect and not mpi.published("server"):
        # Per rank: on the rank's own cores. Per node: anywhere on the node's, so each rank counts its part of them.
        if env.servers_per == "rank":
            starts = float(env.servers or 1)
        else:
            starts = (env.servers or mpi.local_size()) / mpi.local_size()
    return mpi.fair_threads(starts)


def open_worlds(
    config: Config, addresses: list[str], state: bool = False, layouts: Sequence[str] = ("agents",), parts: int = 1
) -> BatchedWorlds:
    """This rank's ``env.num_worlds`` worlds of the run's scenario, seeded for the rank, in the first of ``layouts``
    the world allows (``"stacked"`` needs every agent to share its spaces). With ``env.seats``, only those seats of
    each world (no global state: ``state`` is not asked for); :func:`start_opponents` fills the others. In
    self-play every seat: :func:`train_in_worlds` shows the learner its side (learners.selfplay). The worlds are
    created in ``parts`` parts of rows, which a pipelined rollout steps one at a time (``BatchedWorlds``' ``parts``)."""
    env = config.env
    check_rendezvous(env)
    partial = bool(env.seats) and env.opponent != SELF_PLAY
    kwargs = dict(
        num_worlds=env.num_worlds,
        seed=mpi.seed_for_rank(config.run.seed),
        state=state and not partial,
        timeout_s=env.timeout_s,
        server_key=env.server_key or None,
        client_key=env.client_key or None,
        render=env.render,
        parts=parts,
    )
    if partial:
        kwargs.update(seats=list(env.seats), deadline_ms=env.opponent_deadline_ms)
    if env.group:
        kwargs.update(group=group_name(env.group), invite_only=env.invite_only)

    def worlds_in(layout: str) -> BatchedWorlds:
        if env.join:
            return join_group_worlds(config, addresses, layout)
        return BatchedWorlds(addresses, env.scenario, env.config, layout=layout, **kwargs)

    for layout in layouts[:-1]:
        try:
            return worlds_in(layout)
        except GroupMismatch:
            raise
        except ValueError:  # this layout does not fit the world: try the next
            continue
    return worlds_in(layouts[-1])


def start_opponents(config: Config, worlds: BatchedWorlds) -> list[subprocess.Popen]:
    """Processes playing ``env.opponent`` in the seats of ``worlds`` that the learner leaves to others, one per
    server (``agora play --worlds``, which plays a trained run directory too); none when the learner holds every seat.
    They stop when the worlds close. None either where another program holds those seats: a learner that joined a
    group (``env.join``), or one whose ``env.opponent`` is ``external`` (it waits for them: learners.rendezvous).

    Raises:
        ValueError: ``env.opponent`` is no policy for those seats (checked here, before anything starts).
    """
    if not worlds.partial or config.env.join:  # a joiner's other seats are the owner's business
        return []
    if config.env.opponent == EXTERNAL:
        wait_for_external(config, worlds)
        return []
    env, spec = config.env, worlds.spec
    for agent in worlds.other_agents:
        spaces_ = spec.observation_spaces[agent], spec.action_spaces[agent]
        named_policy(env.opponent, *spaces_, agent=agent, run_loader=load_run_policy)
    keys = (["--server-key", env.server_key] if env.server_key else []) + (
        ["--client-key", env.client_key] if env.client_key else []
    )
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agora_marl",
                "play",
                "--connect",
                address,
                "--worlds",
                ",".join(str(w) for w in ids),
                "--seats",
                ",".join(worlds.other_agents),
                "--policy",
                env.opponent,
                "--timeout",
                str(env.timeout_s),
                *keys,
            ],
            stdout=subprocess.DEVNULL,
        )
        for address, ids in worlds.placement
    ]


def stop_opponents(opponents: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Wait for opponents to see their worlds closed and exit; terminate those that do not within ``grace_s``."""
    for process in opponents:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=grace_s)


@dataclass
class Training:
    """One rank's training in progress, as :func:`train_in_worlds` hands it to an algorithm's loop."""

    config: Config
    run: Run
    worlds: BatchedWorlds | SelfPlayWorlds
    device: torch.device
    resumed: dict[str, Any] | None
    """The state of the run's latest checkpoint (loaded onto ``device``), or None for a fresh run."""
    progress_metric: str = "return"
    """The metric the progress bar shows next to the steps."""
    opponents: list[subprocess.Popen] = field(default_factory=list)
    """The processes playing the seats the learner leaves to others (:func:`start_opponents`)."""
    selfplay: SelfPlayWorlds | None = None
    """In self-play (``env.opponent = "self-play"``): the worlds, which hold the pool of snapshots (= ``worlds``)."""
    last_metrics: dict[str, float] = field(default_factory=dict, init=False)
    """The metrics of the last update that ended (what a run cut short by its worlds' owner returns)."""
    _bar: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.config.run.progress and mpi.is_root():
            from tqdm import tqdm

            total = self.config.run.total_steps
            start = int(self.resumed["step"]) if self.resumed is not None else 0
            self._bar = tqdm(
                total=total, initial=min(start, total), unit="step", unit_scale=True, dynamic_ncols=True, smoothing=0.1
            )

    def track(self, policy: torch.nn.Module) -> None:
        """The algorithm's acting policy, once built (and restored): self-play's snapshots are copies of it. A fresh
        self-play run logs its first evaluation at step 0. Collective."""
        if self.selfplay is not None:
            first = self.selfplay.start(policy, None if self.resumed is None else self.resumed.get("selfplay"))
            if first:
                self.run.log(0, 0, first)

    def end_update(
        self, step: int, update: int, metrics: dict[str, float], checkpoint: Callable[[], dict[str, Any]]
    ) -> UpdateEnd:
        """End ``update`` (``step`` environment steps done) on every rank: log, checkpoint and stop as the run says.

        ``metrics`` are written at logged updates (:meth:`Run.logs_at`); ``checkpoint()`` builds the checkpoint's
        state (with its ``step`` and ``update``) only when one is due.

        Raises:
            TrainingStopped: on every rank, after the checkpoint, when the ranks agreed to stop.
        """
        for process in self.opponents if step < self.config.run.total_steps else ():  # they end with the worlds
            if process.poll() is not None:
                raise RuntimeError(
                    f"the opponent process ({self.config.env.opponent} in {self.worlds.other_agents}) exited with "
                    f"status {process.returncode}: see its error above; the worlds would go on with its seats filled"
                )
        if self.selfplay is not None:
            metrics.update(self.selfplay.end_update(update))
        self.last_metrics = metrics
        end = self.run.end_update(step, update, metrics)
        if self._bar is not None:
            self._bar.update(min(step, self._bar.total) - self._bar.n)
            if self.progress_metric in metrics:
                self._bar.set_postfix_str(f"{self.progress_metric} {metrics[self.progress_metric]:.1f}", refresh=False)
        if end.checkpoint:
            state = checkpoint()
            if self.selfplay is not None:
                state["selfplay"] = self.selfplay.state_dict()
            self.run.save_checkpoint(state)
        if end.stop:
            raise TrainingStopped(step, update, end.reason)
        return end

    def last_step_taken(self) -> None:
        """The run's last step is taken: release shared worlds now, not after the last update. Their other holders
        (the opponents) would otherwise wait a deadline for a step that never comes, then step once more with this
        learner's seats filled."""
        if self.worlds.partial:
            self.worlds.close()

    def close(self) -> None:
        """Close the progress bar (the worlds are closed by :func:`train_in_worlds`)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def train_in_worlds(
    config: Config,
    run: Run,
    addresses: list[str],
    loop: Callable[[Training], dict[str, float]],
    state: bool = False,
    layouts: Sequence[str] = ("agents",),
    progress_metric: str = "return",
    parts: int = 1,
) -> dict[str, float]:
    """Set this rank's threads and device, open its worlds (:func:`open_worlds`), restore the run's latest
    checkpoint, and run ``loop``; the worlds and the progress bar are closed however it ends. Returns what ``loop``
    returns (the final metrics). With ``env.seats``, the opponents of the other seats run as processes for as long
    (:func:`start_opponents`), or in self-play the learner's snapshots play them in process (learners.selfplay).
    Collective: every rank calls it."""
    torch.set_num_threads(torch_threads(config))
    device = select_device(config.run.device)
    worlds = open_worlds(config, addresses, state, layouts, parts)
    training, opponents, selfplay = None, [], None
    try:
        if config.env.opponent == SELF_PLAY:
            worlds = selfplay = SelfPlayWorlds(worlds, config, addresses)
        opponents = start_opponents(config, worlds)
        resumed = run.restore(device)
        training = Training(config, run, worlds, device, resumed, progress_metric, opponents, selfplay)
        return loop(training)
    except ServerError as exc:
        if not (config.env.join and exc.code in WORLDS_GONE):
            raise
        # The worlds are the other learner's: it finished and closed them. This run ends with what it has.
        if mpi.is_root():
            print(f"stopping: the owner of group {config.env.join!r} closed its worlds ({exc.code})", flush=True)
        return training.last_metrics if training is not None else {}
    finally:
        if training is not None:
            training.close()
        worlds.close()
        stop_opponents(opponents)
