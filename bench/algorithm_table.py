"""The algorithm table of docs/learners.md: every built-in algorithm on four worlds, the team return at a fixed budget
of steps and at a fixed wall time, next to random, noop and scripted play.

    .venv/bin/python bench/algorithm_table.py --out /tmp/table           # the whole table, about 60 minutes
    .venv/bin/python bench/algorithm_table.py --scale 0.5 --algos mappo,idqn --worlds cover_v0   # a smoke run

Each cell is one ``agora train algo=ALGO run.total_steps=3N`` with every other setting at its default (the
algorithm's, the world's, 64 worlds, the default env servers; 3 N so that the epsilon and noise schedules, which span
a fraction of run.total_steps, end by N), started as a user starts it and stopped with SIGTERM once it has passed both
budgets of its world: N steps and T seconds of its metrics.csv's ``time_s`` (wall-clock time from the start of the
run, its servers' start-up included), or at ``--cap`` times T, where a slow algorithm's cell then says how many steps
it made instead of a return at N. One run gives both figures: the mean ``return`` (the team's, the sum over the
trained seats, of the episodes that ended, sampled or epsilon-greedy as the algorithm trains) of the updates logged
in the last tenth of each budget, steps in (0.9 N, N] and time_s in (0.9 T, T]; next to the wall-time figure, the
steps it had made by then. Predator-prey trains the three predators against the scripted prey in another process
(``env.seats=predator_* env.opponent=scripted``); the others train every seat. An algorithm that does not declare a
world's action kinds (or partial seats, for predator-prey) gets a cell that says so instead of a run.

The baselines are ``agora eval RUN --policy random --policy noop [--policy scripted]`` over 100 seeded episodes in
one of the world's runs (played greedily where it applies; against the scripted prey for the predators). Wall-clock
figures need a quiet machine: the script prints the load average before and after each run. It writes the markdown
table to stdout (and ``--markdown FILE``), every figure to ``--json FILE``, and keeps the runs in ``--out``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agora_marl.learners.api import action_kind
from agora_marl.learners.registry import BUILTIN, resolve
from agora_marl.learners.run import read_metrics
from agora_marl.scenarios import make_env

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class World:
    """A column pair of the table: a world, how agora train is told to train in it, and its two budgets."""

    name: str
    steps: int
    """The step budget N."""
    seconds: float
    """The wall-time budget T."""
    overrides: tuple[str, ...] = ()
    seats: str = "*"
    """The trained seats (a glob); the others are the scripted opponent's."""
    config: dict = field(default_factory=dict)


SPREAD_CONFIG = {"N": 3, "max_cycles": 25, "continuous_actions": False}
BUDGET = {"steps": 50_000, "seconds": 100.0}
"""Sized so that the 24 runs end within an hour on the shared 2-core machine: enough for PPO to learn visibly and
for the value-based algorithms to reach N within T (MADDPG, about 200 steps/s here, does not)."""
WORLDS = {
    world.name: world
    for world in (
        World("simple_spread", **BUDGET, config=SPREAD_CONFIG),
        World("foraging_v0", **BUDGET, overrides=("env.scenario=foraging_v0",)),
        World("cover_v0", **BUDGET, overrides=("env.scenario=cover_v0",)),
        World(
            "predator_prey_v0",
            **BUDGET,
            overrides=("env.scenario=predator_prey_v0", "env.seats=predator_*", "env.opponent=scripted"),
            seats="predator_*",
        ),
    )
}
HORIZON = 3
"""run.total_steps is HORIZON times the step budget (the schedules' length; a run that reaches it ends there)."""
SCENARIOS = {"simple_spread": "mpe2.simple_spread_v3:parallel_env"}


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cannot_run(algo: str, world: World) -> str | None:
    """Why ``algo`` cannot train in ``world`` (its declarations), or None."""
    cls, _ = resolve(algo)
    env = make_env(SCENARIOS.get(world.name, world.name), world.config)
    seats = [a for a in env.possible_agents if fnmatch.fnmatch(a, world.seats)]
    kinds = sorted({action_kind(env.action_space(a)) for a in seats} - set(cls.actions))
    if kinds:
        return f"acts in {', '.join(sorted(cls.actions))} only; the seats act in {', '.join(kinds)}"
    if world.seats != "*" and not cls.partial_seats:
        return "does not train some seats beside an opponent (partial_seats)"
    return None


def train(algo: str, world: World, run_dir: Path, scale: float, cap: float) -> dict:
    """One cell's run: ``agora train`` until both budgets have passed (or ``cap`` times the time budget), then
    SIGTERM. Returns what it measured."""
    steps, seconds = int(world.steps * scale), world.seconds * scale
    command = [sys.executable, "-m", "agora_marl", "train", f"algo={algo}", *world.overrides]
    # The schedules (epsilon, MADDPG's noise) span a fraction of run.total_steps: 3 N lets every one of them end by
    # N (IDQN at 0.6 N, VDN and QMIX at 0.9 N), as a user would set it for a run of about that length.
    command += [f"run.total_steps={HORIZON * steps}", "run.progress=false", f"run.dir={run_dir}"]
    before = load()
    cap, reason = cap * seconds, "both budgets passed"
    with open(run_dir.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                time.sleep(1.0)
                rows = _rows(run_dir)
                step, elapsed = (int(rows[-1]["step"]), float(rows[-1]["time_s"])) if rows else (0, 0.0)
                if step >= steps and elapsed >= seconds:
                    break
                if elapsed >= cap:
                    reason = f"stopped at {cap:.0f} s before reaching {steps:,} steps"
                    break
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the run checkpoints its update and exits with status 75
            process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode == 0:
        reason = f"ended at run.total_steps ({HORIZON * steps:,})"
    if process.returncode not in (0, 75):
        tail = run_dir.with_suffix(".log").read_text().strip().splitlines()[-3:]
        return {"error": f"agora train exited with {process.returncode}: {' / '.join(tail)}"}
    logged = _rows(run_dir)
    rows = [r for r in logged if r.get("return")]
    at_steps = _window(rows, "step", steps) if logged and int(logged[-1]["step"]) >= steps else []
    at_time = _window(rows, "time_s", seconds)
    return {
        "steps": steps,
        "seconds": seconds,
        "return_at_steps": float(np.mean([float(r["return"]) for r in at_steps])) if at_steps else None,
        "return_at_time": float(np.mean([float(r["return"]) for r in at_time])) if at_time else None,
        "steps_at_time": int(at_time[-1]["step"]) if at_time else None,
        "steps_made": int(logged[-1]["step"]) if logged else 0,
        "time_s": float(logged[-1]["time_s"]) if logged else 0.0,
        "note": reason,
        "load_before": before,
        "load_after": load(),
    }


def _window(rows: list[dict], column: str, budget: float) -> list[dict]:
    """The rows logged in the last tenth of the budget, (0.9 budget, budget]; else the last one within it."""
    within = [r for r in rows if float(r[column]) <= budget]
    return [r for r in within if float(r[column]) > 0.9 * budget] or within[-1:]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return read_metrics(path) if path.exists() else []


def baselines(run_dir: Path, episodes: int) -> dict[str, float]:
    """Random, noop and scripted (where the world has one) in the run's seats, from ``agora eval --json``."""
    from agora_marl.agents.policies import has_scripted_policy
    from agora_marl.learners.config import load_config

    scenario = load_config(run_dir / "config.toml").env.scenario
    names = ["random", "noop"] + (["scripted"] if has_scripted_policy(scenario) else [])
    command = [sys.executable, "-m", "agora_marl", "eval", str(run_dir), "--episodes", str(episodes), "--json"]
    for name in names:
        command += ["--policy", name]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    report = json.loads(out[out.index("{") :])
    rows = report.get("policies") or report.get("matches")
    return {row["policy"]: row["return"]["mean"] for row in rows}


def markdown(results: dict, worlds: list[World], algos: list[str], scale: float) -> str:
    head = ["algorithm"]
    for world in worlds:
        head += [f"{world.name}: {_k(world.steps * scale)} steps", f"{world.seconds * scale:.0f} s (steps by then)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for algo in algos:
        cells = [algo]
        for world in worlds:
            cell = results.get(world.name, {}).get(algo, {})
            if "cannot" in cell or "error" in cell:
                cells += [cell.get("cannot") or cell["error"], "—"]
                continue
            if cell.get("return_at_steps") is None and cell.get("steps_made"):
                cells.append(f"— ({_k(cell['steps_made'])} in {cell['time_s']:.0f} s)")
            else:
                cells.append(_f(cell.get("return_at_steps")))
            at_time = _f(cell.get("return_at_time"))
            if cell.get("note", "").startswith("ended"):
                at_time += f" (ended: {_k(cell['steps_made'])} in {cell['time_s']:.0f} s)"
            elif cell.get("steps_at_time"):
                at_time += f" ({_k(cell['steps_at_time'])})"
            cells.append(at_time)
        lines.append("| " + " | ".join(cells) + " |")
    for name in ("random", "noop", "scripted"):
        cells = [f"*{name}*"]
        for world in worlds:
            value = results.get(world.name, {}).get("baselines", {}).get(name)
            cells += [_f(value), _f(value)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}".replace("-", "−")


def _k(steps: float) -> str:
    return f"{steps / 1e6:.2g}M" if steps >= 1e6 else f"{steps / 1e3:.0f}K"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", default=",".join(BUILTIN), help="comma-separated (default: every built-in)")
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a smoke run: 0.05)")
    parser.add_argument("--cap", type=float, default=1.5, help="stop a run at CAP times the time budget (%(default)s)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per baseline")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    args = parser.parse_args()
    algos, worlds = args.algos.split(","), [WORLDS[w] for w in args.worlds.split(",")]
    results: dict[str, dict] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for world in worlds:
            cells = results.setdefault(world.name, {})
            for algo in algos:
                why = cannot_run(algo, world)
                if why is not None:
                    cells[algo] = {"cannot": why}
                    continue
                cells[algo] = train(algo, world, out / f"{world.name}-{algo}", args.scale, args.cap)
                print(f"{world.name} {algo}: {json.dumps(cells[algo])}", file=sys.stderr, flush=True)
            trained = [algo for algo in algos if "return_at_steps" in cells[algo]]
            if trained:
                cells["baselines"] = baselines(out / f"{world.name}-{trained[0]}", args.episodes)
                print(f"{world.name} baselines: {json.dumps(cells['baselines'])}", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    table = markdown(results, worlds, algos, args.scale)
    print(f"\n{table}\n\n(the whole table: {(time.monotonic() - started) / 60:.1f} minutes)")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
