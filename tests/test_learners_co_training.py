"""Two learners, started independently, train the two teams of the same worlds on one server: one names its worlds
(``env.group``, ``env.opponent=external``), the other finds them by that name (``env.join``)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import load_config
from agora_marl.learners.rendezvous import GroupMismatch
from agora_marl.learners.run import Run, read_metrics
from agora_marl.learners.training import open_worlds, train

ROOT = Path(__file__).resolve().parent.parent
COMMON = [
    "run.progress=false",
    "env.scenario=predator_prey_v0",
    "env.num_worlds=8",
    "ppo.rollout_steps=60",
    "ppo.epochs=4",
    "env.opponent_deadline_ms=20000",
]


@pytest.fixture(scope="module")
def address() -> str:
    with ServerProcesses(count=1) as local:
        yield local.addresses[0]


def _agora_train(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "AGORA_MPI": "off"}
    command = [sys.executable, "-m", "agora_marl", "train", *COMMON, *overrides]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(process: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue, pattern: str, seen: list[str], timeout_s: float = 60.0) -> re.Match:
    while True:
        line = lines.get(timeout=timeout_s)
        assert line is not None, "the process ended before printing " + pattern + ":\n" + "".join(seen)
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found


def test_two_train_processes_train_the_two_teams_of_the_same_worlds(tmp_path, address):
    steps = 8 * 60 * 4
    predators = _agora_train(
        "algo=mappo",
        f"env.connect={address}",
        "env.seats=predator_*",
        "env.opponent=external",
        "env.group=hunt",
        "env.invite_only=true",
        f"run.total_steps={steps}",
        f"run.dir={tmp_path / 'predators'}",
    )
    prey = None
    seen: list[str] = []
    try:
        lines = _lines(predators)
        # The owner says how to join, invitation included, and waits.
        told = _wait_for(lines, r"agora train env\.connect=\S+ env\.join=hunt .*env\.invite_token=(\w+)", seen)
        prey = _agora_train(
            "algo=ippo",
            f"env.connect={address}",
            "env.seats=prey_*",
            "env.join=hunt",
            f"env.invite_token={told.group(1)}",
            f"run.total_steps={steps}",
            f"run.dir={tmp_path / 'prey'}",
        )
        prey_out, _ = prey.communicate(timeout=240)
        predators.wait(timeout=60)
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
    finally:
        for process in (predators, prey):
            if process is not None and process.poll() is None:
                process.kill()
    assert predators.returncode == 0, "".join(seen + rest)
    assert prey.returncode == 0, prey_out
    for side, seats in (("predators", "predator_"), ("prey", "prey_")):
        rows = read_metrics(tmp_path / side / "metrics.csv")
        assert rows and int(rows[-1]["step"]) >= steps * 0.75, (side, rows[-1:])
        # Both stepped together: neither filled the other's seats for long (the deadline is the safety net).
        late = [float(r["opponent_late"]) for r in rows if r.get("opponent_late")]
        assert late and np.mean(late) < 0.1, (side, late)
        assert any(r["return"] for r in rows), side
        config = load_config(tmp_path / side / "config.toml")
        assert all(s.startswith(seats) for s in config.env.seats)


def test_an_external_opponent_that_never_comes_costs_a_clear_timeout(tmp_path, address):
    config = load_config(
        None,
        [*COMMON, "env.seats=predator_*", "env.opponent=external", "env.group=lonely", "env.external_timeout_s=1"],
    )
    run = Run.create(config, tmp_path / "run")
    try:
        with pytest.raises(TimeoutError, match=r"(?s)nobody took .*prey_0.* env\.join=lonely"):
            train(config, run, [address])
    finally:
        run.close()


def test_a_joiner_whose_config_is_not_the_group_gets_the_settings_to_use(tmp_path, address):
    owner = load_config(
        None, [*COMMON, "env.seats=predator_*", "env.opponent=external", "env.group=sized", "env.external_timeout_s=30"]
    )
    worlds = open_worlds(owner, [address])
    try:
        joiner = load_config(None, [*COMMON, "env.seats=prey_*", "env.join=sized", "env.num_worlds=4"])
        with pytest.raises(GroupMismatch, match="env.num_worlds=8"):
            open_worlds(joiner, [address])
        refused = load_config(None, [*COMMON, "env.join=sized"])
        with pytest.raises(ValueError, match="need env.seats"):
            open_worlds(refused, [address])
    finally:
        worlds.close()
