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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.learners import mpi
from agora_marl.learners.config import Config
from agora_marl.learners.mpi.cuda import select_device
from agora_marl.learners.run import Run, TrainingStopped, UpdateEnd


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
    config: Config, addresses: list[str], state: bool = False, layouts: Sequence[str] = ("agents",)
) -> BatchedWorlds:
    """This rank's ``env.num_worlds`` worlds of the run's scenario, seeded for the rank, in the first of ``layouts``
    the world allows (``"stacked"`` needs every agent to share its spaces)."""
    env = config.env
    kwargs = dict(
        num_worlds=env.num_worlds,
        seed=mpi.seed_for_rank(config.run.seed),
        state=state,
        timeout_s=env.timeout_s,
        server_key=env.server_key or None,
        client_key=env.client_key or None,
    )
    for layout in layouts[:-1]:
        try:
            return BatchedWorlds(addresses, env.scenario, env.config, layout=layout, **kwargs)
        except ValueError:  # this layout does not fit the world: try the next
            continue
    return BatchedWorlds(addresses, env.scenario, env.config, layout=layouts[-1], **kwargs)


@dataclass
class Training:
    """One rank's training in progress, as :func:`train_in_worlds` hands it to an algorithm's loop."""

    config: Config
    run: Run
    worlds: BatchedWorlds
    device: torch.device
    resumed: dict[str, Any] | None
    """The state of the run's latest checkpoint (loaded onto ``device``), or None for a fresh run."""
    progress_metric: str = "return"
    """The metric the progress bar shows next to the steps."""
    _bar: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.config.run.progress and mpi.is_root():
            from tqdm import tqdm

            total = self.config.run.total_steps
            start = int(self.resumed["step"]) if self.resumed is not None else 0
            self._bar = tqdm(
                total=total, initial=min(start, total), unit="step", unit_scale=True, dynamic_ncols=True, smoothing=0.1
            )

    def end_update(
        self, step: int, update: int, metrics: dict[str, float], checkpoint: Callable[[], dict[str, Any]]
    ) -> UpdateEnd:
        """End ``update`` (``step`` environment steps done) on every rank: log, checkpoint and stop as the run says.

        ``metrics`` are written at logged updates (:meth:`Run.logs_at`); ``checkpoint()`` builds the checkpoint's
        state (with its ``step`` and ``update``) only when one is due.

        Raises:
            TrainingStopped: on every rank, after the checkpoint, when the ranks agreed to stop.
        """
        end = self.run.end_update(step, update, metrics)
        if self._bar is not None:
            self._bar.update(min(step, self._bar.total) - self._bar.n)
            if self.progress_metric in metrics:
                self._bar.set_postfix_str(f"{self.progress_metric} {metrics[self.progress_metric]:.1f}", refresh=False)
        if end.checkpoint:
            self.run.save_checkpoint(checkpoint())
        if end.stop:
            raise TrainingStopped(step, update, end.reason)
        return end

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
) -> dict[str, float]:
    """Set this rank's threads and device, open its worlds (:func:`open_worlds`), restore the run's latest
    checkpoint, and run ``loop``; the worlds and the progress bar are closed however it ends. Returns what ``loop``
    returns (the final metrics). Collective: every rank calls it."""
    torch.set_num_threads(torch_threads(config))
    device = select_device(config.run.device)
    worlds = open_worlds(config, addresses, state, layouts)
    training = None
    try:
        training = Training(config, run, worlds, device, run.restore(device), progress_metric)
        return loop(training)
    finally:
        if training is not None:
            training.close()
        worlds.close()
