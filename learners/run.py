"""A run directory: the resolved config, metrics (CSV and TensorBoard), checkpoints, and resuming.

Layout::

    RUN_DIR/
      config.toml                 the resolved config (learners.config.to_toml); --resume reads it back
      metrics.csv                 one row per logged update: step, update, time_s, then the metrics
      tb/events.out.tfevents.*    the same metrics for TensorBoard
      checkpoints/update_0000050.pt   model, optimizer, RNG states and counters (torch.save of plain data)
      learning_curve.png          written by `agora plot`

Every rank builds a :class:`Run`; only the writer (rank 0) creates files. A checkpoint is a dict of tensors and
plain Python values that the algorithm assembles; it must hold the counters ``step`` and ``update``. It is written
atomically and loaded with ``weights_only=True``, so a checkpoint file can never run code.

The end of an update is one explicit step: every rank calls :meth:`Run.end_update` after each update, which writes
the metrics row when the update is a logged one and returns an :class:`UpdateEnd` saying whether to checkpoint now
and whether to stop now; the algorithm does both (learners.training). Stopping early (a job's time limit,
preemption): :meth:`Run.stop_on` gives the run a poll, such as "a SIGTERM came". At every logged update all ranks
combine their polls with one allreduce, so they agree to stop after the same update even when the signal reaches
them at different times; that update's :class:`UpdateEnd` then says checkpoint and stop, and the algorithm raises
:class:`TrainingStopped` after checkpointing.
"""

from __future__ import annotations

import csv
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agora_marl.learners import mpi
from agora_marl.learners.config import Config, load_config, save_config

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
_FIXED_COLUMNS = ("step", "update", "time_s")


class RunDirError(RuntimeError):
    """The run directory is missing, or already holds a run that would be overwritten."""


@dataclass(frozen=True)
class UpdateEnd:
    """What the end of one update calls for (:meth:`Run.end_update`); the same on every rank."""

    logged: bool
    """Its metrics row was written: every ``run.log_every`` updates, and the last."""
    checkpoint: bool
    """Checkpoint it now: every ``run.checkpoint_every`` updates, the last, and before a stop."""
    stop: bool
    """Stop after that checkpoint: a stop was requested (:meth:`Run.stop_on`) and the run is not done."""
    final: bool
    """The update reached ``run.total_steps``: the run is done."""
    reason: int = 0
    """With ``stop``: the largest of the ranks' stop polls (for a signal, its number)."""


class TrainingStopped(Exception):
    """Training stopped early, as asked through :meth:`Run.stop_on`, after checkpointing ``update``.

    Attributes:
        step: environment steps done.
        update: the update checkpointed last (the resumed run continues after it).
        reason: the largest of the ranks' stop polls (for a signal, its number).
    """

    def __init__(self, step: int, update: int, reason: int):
        super().__init__(f"training stopped after update {update} (step {step}), reason {reason}")
        self.step, self.update, self.reason = step, update, reason


def default_run_dir(config: Config, root: str | Path = "runs") -> Path:
    """``runs/<algo>-<scenario>-<YYYYmmdd-HHMMSS>``: a fresh name for a run without ``run.dir``."""
    scenario = config.env.scenario.rsplit(":", 1)[-1] if config.env.scenario.startswith("gymnasium:") else None
    scenario = scenario or config.env.scenario.split(":")[0].rsplit(".", 1)[-1]
    return Path(root) / f"{config.algorithm.name}-{scenario}-{time.strftime('%Y%m%d-%H%M%S')}"


class Run:
    """One run directory as seen by one rank.

    Args:
        directory: the run directory.
        config: the run's resolved config.
        writer: whether this rank writes (rank 0); other ranks only read checkpoints.
    """

    def __init__(self, directory: str | Path, config: Config, writer: bool = True):
        self.directory = Path(directory)
        self.config = config
        self.writer = writer
        self._start = time.monotonic()
        self._elapsed_before = 0.0
        self._tb = None
        self._purge_step: int | None = None
        self._columns: list[str] | None = None
        self._stop_poll: Callable[[], int] | None = None
        self._stop_reason = 0

    @classmethod
    def create(cls, config: Config, directory: str | Path, writer: bool = True) -> Run:
        """Start a new run in ``directory`` (which must not hold a run yet) and save its config (writer only)."""
        directory = Path(directory)
        if writer and (directory / CONFIG_FILE).exists():
            raise RunDirError(
                f"{directory} already holds a run; continue it with --resume {directory}, or choose another run.dir"
            )
        if writer:
            (directory / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            save_config(config, directory / CONFIG_FILE)
        return cls(directory, config, writer)

    @classmethod
    def open(cls, directory: str | Path, overrides: list[str] | None = None, writer: bool = True) -> Run:
        """Reopen an existing run to continue it: its saved config, then ``overrides`` (e.g. a larger budget)."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists():
            raise RunDirError(f"{directory} is not a run directory (no {CONFIG_FILE})")
        config = load_config(directory / CONFIG_FILE, overrides)
        if writer and overrides:
            save_config(config, directory / CONFIG_FILE)
        return cls(directory, config, writer)

    # -- metrics ---------------------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        """Wall-clock training time of the run so far, including time before a resume."""
        return self._elapsed_before + time.monotonic() - self._start

    def logs_at(self, step: int, update: int) -> bool:
        """Whether :meth:`end_update` writes the metrics of ``update`` (ending at ``step``): every ``run.log_every``
        updates, and the last. For an algorithm whose metrics cost a collective to compute."""
        return update % self.config.run.log_every == 0 or step >= self.config.run.total_steps

    def end_update(self, step: int, update: int, metrics: dict[str, float]) -> UpdateEnd:
        """End ``update``, after which ``step`` environment steps are done: what to do now, the same on every rank.

        Writes ``metrics`` when :meth:`logs_at` says so (the metrics of other updates are not used) and, at those
        updates, agrees with the other ranks on whether to stop (:meth:`stop_on`). Every rank calls it after every
        update; the caller then checkpoints and stops as the returned :class:`UpdateEnd` says.
        """
        rs = self.config.run
        final = step >= rs.total_steps
        logged = self.logs_at(step, update)
        if logged:
            self.log(step, update, metrics)
            if self._stop_poll is not None and not self._stop_reason:
                self._stop_reason = int(mpi.allreduce_max(float(self._stop_poll())))
        stop = bool(self._stop_reason) and not final
        checkpoint = final or stop or update % rs.checkpoint_every == 0
        return UpdateEnd(logged, checkpoint, stop, final, self._stop_reason if stop else 0)

    def log(self, step: int, update: int, metrics: dict[str, float]) -> None:
        """Append one row to metrics.csv and write the scalars to TensorBoard (writer rank only)."""
        if not self.writer:
            return
        row = {"step": step, "update": update, "time_s": round(self.elapsed_s, 3), **metrics}
        self._append_csv(row)
        tb = self._tensorboard()
        for key, value in metrics.items():
            tb.add_scalar(key, value, step)

    def stop_on(self, poll: Callable[[], int]) -> None:
        """Stop training after the next logged update at which ``poll()`` is positive on any rank.

        That update's :class:`UpdateEnd` says checkpoint and stop on every rank (unless the run just reached
        ``total_steps``: it then ends as usual). Costs one allreduce of one number per logged update.
        """
        self._stop_poll = poll

    def _tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.directory / "tb"), purge_step=self._purge_step)
        return self._tb

    def _append_csv(self, row: dict[str, Any]) -> None:
        path = self.directory / METRICS_FILE
        if self._columns is None:
            self._columns = _csv_header(path) or list(_FIXED_COLUMNS)
            if not path.exists():
                _write_csv(path, self._columns, [])
        missing = [key for key in row if key not in self._columns]
        if missing:
            # A metric seen for the first time: rewrite the file with the wider header (rare: once per new key).
            self._columns += missing
            _write_csv(path, self._columns, [*read_metrics(path), row])
            return
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self._columns, restval="").writerow(row)

    # -- checkpoints -----------------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return sorted((self.directory / CHECKPOINT_DIR).glob("update_*.pt"))

    def save_checkpoint(self, state: dict[str, Any]) -> Path | None:
        """Write ``state`` (with its ``step`` and ``update`` counters) and prune old periodic checkpoints."""
        assert "step" in state and "update" in state, "a checkpoint carries its step and update counters"
        path = None
        if self.writer:
            path = self.directory / CHECKPOINT_DIR / f"update_{state['update']:07d}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({**state, "elapsed_s": self.elapsed_s}, tmp)
            os.replace(tmp, path)
            for old in self.checkpoints()[: -max(1, self.config.run.keep_checkpoints)]:
                old.unlink()
        return path

    def restore(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The latest checkpoint's state, or None for a fresh run.

        Also drops metric rows logged after the checkpoint (the resumed run logs them again) and makes
        TensorBoard purge its events past that step.
        """
        found = self.checkpoints()
        if not found:
            return None
        state = load_checkpoint(found[-1], map_location)
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._start = time.monotonic()
        self._purge_step = int(state["step"]) + 1
        path = self.directory / METRICS_FILE
        if self.writer and path.exists():
            rows = read_metrics(path)
            if rows:
                _write_csv(path, list(rows[0]), [r for r in rows if int(float(r["step"])) <= state["step"]])
        return state

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's state dict (plain data and tensors only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """metrics.csv as a list of rows (column -> text; empty text where a metric was not logged)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _csv_header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with path.open(newline="") as f:
        return next(csv.reader(f), None)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python and torch (CPU and every CUDA device), as checkpointable data."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
