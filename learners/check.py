"""``agora learners check ALGO``: the learner API's contract, run on any algorithm (a built-in or your own).

Checks, in order, each printed as it ends (``ok``, ``FAIL`` with what to fix, or ``skip`` with why); the first
failure stops the checks that build on it:

- ``declarations``: ``algo`` loads and its class declares what ``api.Algorithm`` asks (learners.registry).
- ``settings``: its settings, with the check's and the command line's overrides, round-trip through TOML unchanged
  (what the run directory's config.toml and ``--resume`` rely on).
- ``train``: four updates on a tiny world (mpe2 simple_spread with 2 agents, discrete or continuous as the
  algorithm acts), every action checked against its space, a checkpoint every two.
- ``resume``: two updates, a stop, and a resume for two more end bit for bit where the four straight ones did
  (the policy, every registered object, the per-rank state, the return metrics).
- ``policy``: the checkpoint alone rebuilds the policy (``make_policy`` with its settings, spec and seats), which
  acts within every seat's action space.
- ``partial seats`` (where declared): it trains one seat while the ``train`` run plays the other in an opponent
  process, which loads that run afresh (without fresh processes: a random opponent).
- ``self-play`` (where declared, in a discrete world): it trains player_0 of coin_duel_v0 against its snapshots.
- ``eval``, ``play``: ``agora eval RUN_DIR`` and ``agora play --policy RUN_DIR`` load the run in fresh processes.
- ``mpirun -n 2``: two ranks train in sync (the harness compares their parameters after every update).

The algorithm's ``check_settings`` (and ``key=value`` overrides) size its updates for seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agora_marl.envserver.process import ServerProcesses
from agora_marl.envserver.protocol.spaces import check_value
from agora_marl.learners.config import Config, load_config, to_toml
from agora_marl.learners.registry import resolve
from agora_marl.learners.run import Run, TrainingStopped, load_checkpoint, read_metrics
from agora_marl.learners.trained import policy_from_checkpoint
from agora_marl.learners.training import train

TINY_WORLD = {"N": 2, "max_cycles": 10}
#: The run settings of every check run: a checkpoint every two updates, all kept, every update logged.
RUN = ["run.checkpoint_every=2", "run.keep_checkpoints=10", "run.log_every=1", "run.progress=false", "run.seed=7"]
EXACT_METRICS = ("return", "episode_length", "episodes")
SUBPROCESS_TIMEOUT_S = 120.0


class CheckFailed(Exception):
    """A check found the algorithm wrong: ``problem`` says what, ``fix`` what to change."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; fix: {fix}")
        self.problem, self.fix = problem, fix


class CheckSkipped(Exception):
    """A check that does not apply to this algorithm: the row says why."""


@dataclass
class Row:
    """One check's outcome."""

    check: str
    status: str
    """``ok``, ``FAIL`` or ``skip``."""
    detail: str
    seconds: float

    def line(self) -> str:
        return f"  {self.status:<4}  {self.check:<14} {self.detail}  ({self.seconds:.1f} s)"


@dataclass
class CheckReport:
    """Every check's row, and the traceback of the last one the algorithm's own code failed (None if none)."""

    rows: list[Row]
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return all(row.status != "FAIL" for row in self.rows)


class _Checks:
    """The check runs of one algorithm, sharing one server and one folder of run directories."""

    def __init__(self, algo: str, overrides: list[str], folder: Path, address: str, out: Callable[[str], None]):
        self.algo, self.overrides, self.folder, self.address, self.out = algo, overrides, folder, address, out
        self.cls: Any = None  # the class, once the declarations check loaded it
        self.rows: list[Row] = []
        self.traceback: str | None = None
        """The traceback of the last check the algorithm's own code failed."""

    def run(self, check: str, fn: Callable[[], str]) -> bool:
        began = time.monotonic()
        try:
            row = Row(check, "ok", fn(), 0.0)
        except CheckSkipped as exc:
            row = Row(check, "skip", str(exc), 0.0)
        except CheckFailed as exc:
            row = Row(check, "FAIL", str(exc), 0.0)
        except Exception as exc:  # the algorithm raised (or the harness refused what it did): that is the finding
            said = str(exc) if "fix: " in str(exc) else "".join(traceback.format_exception_only(type(exc), exc))
            detail = said.strip() + ("" if "fix: " in said else "; fix: the traceback (--traceback) shows where")
            row = Row(check, "FAIL", detail, 0.0)
            self.traceback = traceback.format_exc()
        row.seconds = time.monotonic() - began
        self.rows.append(row)
        self.out(row.line())
        return row.status != "FAIL"

    # -- configs ---------------------------------------------------------------------------------------------

    def config(self, *extra: str) -> Config:
        settings = [f"{self.cls.settings_table()}.{k}={_toml(v)}" for k, v in self.cls.check_settings.items()]
        continuous = "discrete" not in self.cls.actions and "box" in self.cls.actions
        world = {**TINY_WORLD, "continuous_actions": continuous}
        base = [f"algo={self.algo}", "env.num_worlds=4", f"env.connect=[{_toml(self.address)}]", *RUN]
        base.append("env.config={" + ", ".join(f"{k} = {_toml(v)}" for k, v in world.items()) + "}")
        return load_config(None, [*base, *settings, *self.overrides, *extra])

    def train_updates(self, config: Config, directory: Path, updates: int, resume: bool = False) -> dict[str, Any]:
        """Train until ``updates`` updates ended in this process (stopping as a job's time limit would), and return
        the last checkpoint's state."""
        run = Run.open(directory) if resume else Run.create(config, directory)
        calls = iter(range(updates, 0, -1))
        run.stop_on(lambda: int(next(calls, 1) == 1))
        try:
            train(run.config, run, list(run.config.env.connect), check_actions=True)
        except TrainingStopped:
            pass
        finally:
            run.close()
        return load_checkpoint(run.checkpoints()[-1])

    # -- the checks ------------------------------------------------------------------------------------------

    def declarations(self) -> str:
        c = self.cls = resolve(self.algo)[0]
        flags = [f for f, on in (("partial seats", c.partial_seats), ("self-play", c.self_play)) if on]
        kind = "on-policy" if c.on_policy else "off-policy"
        return (
            f"{c.name} ({c.__module__}.{c.__qualname__}): [{c.settings_table()}], actions {sorted(c.actions)}, "
            f"state {c.state}, {kind}" + (f", {', '.join(flags)}" if flags else "")
        )

    def settings(self) -> str:
        config = self.config()
        written = self.folder / "written.toml"
        try:
            written.write_text(to_toml(config))
            back = load_config(written)
        except ValueError as exc:
            raise CheckFailed(
                f"the settings do not round-trip through TOML: {exc}",
                "give Settings fields that TOML holds (bool, int, float, str, and lists or tables of them; no None, "
                "tuples or objects), annotated with those types",
            ) from None
        if back != config:
            diff = _differences(dataclasses.asdict(config.algo_settings), dataclasses.asdict(back.algo_settings))
            raise CheckFailed(
                f"the settings read back from TOML differ: {diff}",
                "annotate every Settings field with the type of its default (float fields: write 1.0, not 1)",
            )
        return f"[{config.section}] round-trips through TOML ({len(dataclasses.fields(config.algo_settings))} fields)"

    def train_four(self) -> str:
        state = self.train_updates(self.config(), self.folder / "straight", 4)
        rows = read_metrics(self.folder / "straight" / "metrics.csv")
        if state["update"] != 4 or len(rows) != 4:
            raise CheckFailed(f"the run ended at update {state['update']} with {len(rows)} rows", "end every update")
        last = rows[-1]
        first = [k for k in ("return", "episodes") if last.get(k)]
        rest = [k for k in last if k not in (*first, "step", "update", "time_s") and last[k]]
        shown = ", ".join(f"{k} {float(last[k]):.3g}" for k in [*first, *rest])
        return f"4 updates, {state['step']} steps; {shown if len(shown) < 120 else shown[:117] + '...'}"

    def resume(self) -> str:
        directory = self.folder / "resumed"
        self.train_updates(self.config(), directory, 2)
        b = self.train_updates(self.config(), directory, 2, resume=True)
        a = load_checkpoint(sorted((self.folder / "straight" / "checkpoints").glob("*.pt"))[-1])
        fix = (
            "register every stateful object with session.register (optimizers, target networks, api.Counters; "
            "replay memories per_rank), draw randomness only from torch or session.rng, and start afresh from "
            "begin_update()'s result when it returns one"
        )
        if (a["step"], a["update"]) != (b["step"], b["update"]):
            raise CheckFailed(f"the resumed run ended at {b['update']} ({b['step']} steps)", fix)
        for part in ("policy", "state", "per_rank"):
            diff = _differences(a[part], b[part], part)
            if diff:
                raise CheckFailed(f"resume does not continue exactly: {diff} differs from the uninterrupted run", fix)
        straight, resumed = (read_metrics(self.folder / d / "metrics.csv") for d in ("straight", "resumed"))
        for key in EXACT_METRICS:
            if [r.get(key) for r in straight] != [r.get(key) for r in resumed]:
                raise CheckFailed(f"resume does not continue exactly: metric {key} differs", fix)
        return "2 updates + stop + resume for 2 = 4 straight, bit for bit"

    def policy(self) -> str:
        path = sorted((self.folder / "straight" / "checkpoints").glob("*.pt"))[-1]
        try:
            policy = policy_from_checkpoint(load_checkpoint(path), str(path))
        except Exception as exc:
            raise CheckFailed(
                f"the checkpoint does not rebuild the policy: {exc}",
                "make_policy(spec, seats, settings) must build the networks train() registers, from those "
                "arguments alone",
            ) from None
        for greedy in (True, False):
            obs = {a: np.zeros((3, *policy.observation_spaces[a].shape), np.float32) for a in policy.possible_agents}
            acted = policy.act(obs, greedy=greedy)
            for agent in policy.possible_agents:
                try:
                    check_value(policy.action_spaces[agent], np.asarray(acted[agent]), (3,), f"{agent}'s action")
                except (KeyError, ValueError) as exc:
                    raise CheckFailed(
                        f"the rebuilt policy's act(obs, greedy={greedy}) for 3 observations of {agent}: {exc!r}",
                        "act returns {agent: (B, *action_shape)} of values of each agent's action space",
                    ) from None
        return f"{type(policy).__name__} rebuilt from {path.name}, acts for {policy.possible_agents}"

    def partial_seats(self, processes: bool) -> str:
        if not self.cls.partial_seats:
            raise CheckSkipped("not declared (partial_seats = False)")
        trained = self.folder / "straight"
        seats = load_checkpoint(sorted((trained / "checkpoints").glob("*.pt"))[-1])["seats"]
        if len(seats) < 2:
            raise CheckSkipped(f"the world has one seat ({seats[0]})")
        # With fresh processes, the train run plays the other seats: the opponent process loads the algorithm too.
        opponent = trained if processes else "random"
        mine, theirs = seats[0], ",".join(seats[1:])
        extra = [f'env.seats=["{mine}"]', f"env.opponent={opponent}", "env.opponent_deadline_ms=10000"]
        state = self.train_updates(self.config(*extra), self.folder / "partial", 2)
        rows = read_metrics(self.folder / "partial" / "metrics.csv")
        late = max(float(r.get("opponent_late") or 0) for r in rows)
        if state["seats"] != [mine]:
            raise CheckFailed(f"the partial run trained {state['seats']}, not [{mine}]", "train session.seats only")
        who = "the train run's" if processes else "a random"
        return f"{mine} trained beside {who} {theirs} (an opponent process), opponent_late {late:.2f}"

    def self_play(self) -> str:
        if not self.cls.self_play:
            raise CheckSkipped("not declared (self_play = False)")
        if "discrete" not in self.cls.actions:
            raise CheckSkipped("the self-play world (coin_duel_v0) has discrete actions")
        extra = [
            "env.scenario=coin_duel_v0",
            "env.config={}",
            "env.seats=player_0",
            "env.opponent=self-play",
            "selfplay.eval_every=0",
            "selfplay.snapshot_every=1",
        ]
        state = self.train_updates(self.config(*extra), self.folder / "selfplay", 2)
        pool = state["selfplay"]["ids"]
        if len(pool) != 3:
            raise CheckFailed(f"the pool holds {pool} after 2 updates", "register the policy before the first update")
        return f"player_0 against its snapshots, pool {pool}"

    def start_processes(self) -> dict[str, subprocess.Popen | str]:
        """``agora eval``, ``agora play`` and ``mpirun -n 2 agora train``, started at once (they mostly wait for
        their imports); a string where one cannot start."""
        run_dir = str(self.folder / "straight")
        config = self.config()
        env = {**os.environ, "AGORA_MPI": "off"}
        agora = [sys.executable, "-m", "agora_marl"]
        world = ["--scenario", config.env.scenario]
        world += [x for k, v in config.env.config.items() for x in ("--config", f"{k}={json.dumps(v)}")]
        started: dict[str, subprocess.Popen | str] = {
            "eval": _popen([*agora, "eval", run_dir, "--episodes", "2", "--connect", self.address], env),
            "play": _popen(
                [*agora, "play", "--connect", self.address, *world, "--policy", run_dir, "--episodes", "1"], env
            ),
        }
        mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
        if mpirun is None:
            started["mpirun -n 2"] = "no mpirun on PATH or next to the interpreter (pip install mpich)"
        else:
            # Two updates of two ranks: twice the steps of the first two of one rank.
            steps = 2 * int(load_checkpoint(self.folder / "straight" / "checkpoints" / "update_0000002.pt")["step"])
            written = self.folder / "two_ranks.toml"
            written.write_text(to_toml(config))
            args = [*agora, "train", "--config", str(written), f"run.total_steps={steps}", "run.sync_every=1"]
            args.append(f"run.dir={self.folder / 'two_ranks'}")
            ranks_env = {k: v for k, v in os.environ.items() if k != "AGORA_MPI"}  # its ranks must see MPI
            started["mpirun -n 2"] = _popen([mpirun, "-n", "2", *args], {**ranks_env, "OMP_NUM_THREADS": "1"})
        return started

    def finish(self, name: str, process: subprocess.Popen | str) -> str:
        if isinstance(process, str):
            raise CheckSkipped(process)
        try:
            stdout, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, _ = process.communicate()
            raise CheckFailed(
                f"{name} did not finish in {SUBPROCESS_TIMEOUT_S:.0f} s: {stdout[-400:]}", "see above"
            ) from None
        if process.returncode != 0:
            fix = {
                "mpirun -n 2": "average gradients with GradientAllreducer and change parameters only through the "
                "optimizer, so that every rank applies the same update",
            }.get(name, "make_policy must rebuild the policy in a process that imported nothing but the run")
            raise CheckFailed(f"{name} failed (status {process.returncode}): {stdout.strip()[-600:]}", fix)
        last = [line for line in stdout.splitlines() if line.strip()][-1:]
        return last[0].strip()[:140] if last else "done"


def check_algorithm(
    algo: str,
    overrides: list[str] | None = None,
    out: Callable[[str], None] = print,
    processes: bool = True,
    keep: Path | None = None,
) -> CheckReport:
    """Run the checks of the module docstring on ``algo`` and report them (each row also given to ``out``).

    Args:
        overrides: ``key=value`` settings for every check run (``ppo.epochs=1``, ``env.scenario=...``).
        processes: also run the checks in fresh processes (eval, play, mpirun).
        keep: keep the run directories in this folder (default: a temporary one, removed).
    """
    overrides = list(overrides or [])
    # A long heartbeat timeout: the fresh processes import torch after they joined, slowly on a loaded machine.
    with _folder(keep) as folder, ServerProcesses(count=1, server_args=["--heartbeat-timeout", "120"]) as servers:
        checks = _Checks(algo, overrides, folder, servers.addresses[0], out)
        for name, fn in (
            ("declarations", checks.declarations),
            ("settings", checks.settings),
            ("train", checks.train_four),
        ):
            if not checks.run(name, fn):
                return CheckReport(checks.rows, checks.traceback)
        # The fresh processes need only the trained run: they start now and import while the rest runs here.
        started = checks.start_processes() if processes else {}
        try:
            if checks.run("resume", checks.resume) and checks.run("policy", checks.policy):
                checks.run("partial seats", lambda: checks.partial_seats(processes))
                checks.run("self-play", checks.self_play)
        finally:
            for name, process in started.items():
                checks.run(name, lambda n=name, p=process: checks.finish(n, p))
        return CheckReport(checks.rows, checks.traceback)


@contextlib.contextmanager
def _folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="agora-learners-check-") as tmp:
        yield Path(tmp)


def _popen(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _differences(a: Any, b: Any, where: str = "") -> str:
    """The first place where two nested states differ ('' when they are equal, bit for bit)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{where} (keys {sorted(set(a) ^ set(b))})"
        for key in a:
            found = _differences(a[key], b[key], f"{where}.{key}" if where else str(key))
            if found:
                return found
        return ""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _differences(x, y, f"{where}[{i}]")
            if found:
                return found
        return ""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
        return "" if same else where
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return "" if np.array_equal(a, b) else where
    return "" if a == b else where
