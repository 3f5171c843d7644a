"""Mixed teams: IPPO trains two of simple_spread's agents while the scripted spread policy plays the third."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run, load_checkpoint, read_metrics
from agora_marl.learners.training import train
from tests.shared_worlds import random_seat_returns

# Measured on 2 cores (30k steps, seeds 1-3): the learners' return rises from about -38 (random, as the baseline)
# to about -33 over the last updates.
MIXED = [
    "run.progress=false",
    "algo=ippo",
    "env.scenario=mpe2.simple_spread_v3:parallel_env",
    'env.seats=["agent_0", "agent_1"]',
    "env.opponent=scripted",
    "env.num_worlds=32",
    "ppo.lr=2e-3",
    "ppo.epochs=10",
]


@pytest.fixture(scope="module")
def servers() -> list[str]:
    with ServerProcesses(count=1) as local:
        yield local.addresses


def _random_learners_return(config, addresses, ticks: int = 200) -> float:
    """The learner seats' mean return per episode when they move at random beside the same scripted agent_2."""
    ended, mine, others = random_seat_returns(config, addresses, ticks)
    assert mine == ["agent_0", "agent_1"] and others == ["agent_2"]
    assert len(ended) >= 100, "enough episodes for a baseline"
    return float(np.mean(ended))


def test_ippo_learners_beside_a_scripted_agent_beat_random_learners(tmp_path, servers):
    config = load_config(None, MIXED)
    baseline = _random_learners_return(config, servers)
    config = load_config(None, [*MIXED, "run.total_steps=30000"])
    run = Run.create(config, tmp_path / "run")
    try:
        metrics = train(config, run, servers)
    finally:
        run.close()
    rows = read_metrics(run.directory / "metrics.csv")
    last = np.mean([float(r["return"]) for r in rows[-5:]])
    assert last > baseline + 3.0, f"trained {last:.2f} vs random learners {baseline:.2f} beside a scripted agent_2"
    assert max(float(r["opponent_late"]) for r in rows) < 0.1 and metrics["own_late"] == 0.0
    state = load_checkpoint(run.checkpoints()[-1])
    assert state["seats"] == ["agent_0", "agent_1"]
