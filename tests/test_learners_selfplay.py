"""Self-play (``env.opponent = "self-play"``): the snapshot pool's sampling and capacity, learning on coin_duel_v0
against the pool (measured against the scripted player), and exact resume of the pool and its opponents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.agents.policies import named_policy
from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import SelfPlaySettings, load_config
from agora_marl.learners.run import Run, load_checkpoint, read_metrics
from agora_marl.learners.selfplay import SnapshotPool
from agora_marl.learners.training import train

DUEL = [
    "run.progress=false",
    "algo=ippo",
    "env.scenario=coin_duel_v0",
    "env.seats=player_0",
    "env.opponent=self-play",
]


@pytest.fixture(scope="module")
def servers() -> list[str]:
    with ServerProcesses(count=1) as local:
        yield local.addresses


def _pool(sampling: str, count: int, capacity: int = 10, power: float = 2.0) -> SnapshotPool:
    pool = SnapshotPool(SelfPlaySettings(sampling=sampling, capacity=capacity, priority_power=power), seed=0)
    for update in range(count):
        pool.add(update, {"w": torch.full((2,), float(update))})
    return pool


def test_the_pool_keeps_the_newest_snapshots_up_to_its_capacity():
    pool = _pool("uniform", 5, capacity=3)
    assert pool.ids == [2, 3, 4] and pool.updates == [2, 3, 4] and len(pool) == 3
    assert [float(a["w"][0]) for a in pool.actors] == [2.0, 3.0, 4.0]
    pool.record(np.array([0, 3]), np.array([1.0, 0.5]))  # snapshot 0 left the pool: its result is not counted
    pool.sync()
    assert pool.games.tolist() == [0, 1, 0] and pool.points.tolist() == [0, 0.5, 0]


def test_latest_and_uniform_sampling():
    assert set(_pool("latest", 4).sample(500).tolist()) == {3}
    counts = np.bincount(_pool("uniform", 4).sample(8000), minlength=4) / 8000
    assert np.abs(counts - 0.25).max() < 0.03, counts


def test_prioritised_sampling_prefers_the_snapshots_the_learner_beats_least():
    pool = _pool("prioritised", 3)
    pool.record(np.repeat([0, 1, 2], 100), np.repeat([1.0, 0.5, 0.0], 100))  # always wins, draws, always loses
    pool.sync()
    p = np.array([101, 51, 1]) / 102  # smoothed win rates: (points + 1) / (games + 2)
    expected = (1 - p) ** 2 / ((1 - p) ** 2).sum()
    np.testing.assert_allclose(pool.probabilities(), expected)
    counts = np.bincount(pool.sample(8000), minlength=3) / 8000
    assert counts[2] > 0.75 and counts[0] < 0.01 and np.abs(counts - expected).max() < 0.02, counts
    flat = _pool("prioritised", 3, power=0.0)
    flat.record(np.array([0, 0]), np.array([1.0, 1.0]))
    flat.sync()
    np.testing.assert_allclose(flat.probabilities(), [1 / 3] * 3)  # power 0: uniform whatever the results


def test_the_pool_state_round_trips_with_its_sampler():
    pool = _pool("prioritised", 4, capacity=3)
    pool.record(np.array([1, 2, 2]), np.array([0.0, 1.0, 0.5]))
    pool.sync()
    pool.sample(7)
    copy = SnapshotPool(pool.settings, seed=99)
    copy.load_state_dict(pool.state_dict())
    assert copy.ids == pool.ids and copy.games.tolist() == pool.games.tolist()
    assert copy.sample(50).tolist() == pool.sample(50).tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["selfplay.sampling=best"], "latest, uniform, prioritised"),
        (["env.seats=[]"], "env.seats"),
        (["selfplay.eval_opponent=nobody"], "eval_every=0"),
        (["algo=idqn"], "algo=ippo"),
    ],
)
def test_bad_self_play_settings_are_refused_with_the_fix(tmp_path, servers, overrides, message):
    config = load_config(None, [*DUEL, "env.num_worlds=2", *overrides])
    run = Run.create(config, tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        train(config, run, servers)
    run.close()


def _random_win_rate(addresses, episodes: int = 64) -> float:
    """Uniformly random moves for player_0 against the scripted player_1: the baseline of the learning test."""
    with BatchedWorlds(addresses, "coin_duel_v0", num_worlds=32, seed=5) as worlds:
        result, rng = worlds.reset(), np.random.default_rng(0)
        space = worlds.observation_spaces["player_1"]
        scripted = named_policy("scripted", space, worlds.action_spaces["player_1"])
        returns, outcomes = np.zeros(32), []
        while len(outcomes) < episodes:
            moves = np.stack([scripted(o) for o in result.obs["player_1"]])
            result = worlds.step({"player_0": rng.integers(0, 5, 32), "player_1": moves})
            returns += result.rewards[:, 0]
            outcomes += list(returns[result.episode_over] > 0)
            returns[result.episode_over] = 0.0
    return float(np.mean(outcomes))


@pytest.mark.parametrize("algo", ["ippo", "mappo"])
def test_self_play_raises_the_win_rate_against_the_scripted_player(tmp_path, servers, algo):
    """IPPO or MAPPO (its critic on the world's state: the learner holds every seat) as player_0 against a pool of
    its own snapshots; its greedy win rate against the scripted player, never trained against, rises from the
    untrained policy's (logged at step 0) and random play's."""
    baseline = _random_win_rate(servers)
    config = load_config(
        None,
        [
            *DUEL,
            f"algo={algo}",
            "env.num_worlds=32",
            "ppo.rollout_steps=20",
            "ppo.epochs=4",
            "run.total_steps=32000",
            "selfplay.snapshot_every=5",
            "selfplay.eval_every=10",
        ],
    )
    run = Run.create(config, tmp_path / "run")
    try:
        train(config, run, servers)
    finally:
        run.close()
    rows = read_metrics(run.directory / "metrics.csv")
    evals = [(int(r["step"]), float(r["selfplay/eval_win_rate"])) for r in rows if r["selfplay/eval_win_rate"]]
    assert [step for step, _ in evals] == [0, 6400, 12800, 19200, 25600, 32000]
    untrained, last = evals[0][1], evals[-1][1]
    assert last > max(untrained, baseline) + 0.2, (evals, baseline)
    assert float(rows[-1]["selfplay/pool_size"]) == 11  # the untrained learner and one snapshot every 5 updates
    assert all(0 <= float(r["selfplay/win_rate"]) <= 1 for r in rows[1:] if r["selfplay/win_rate"])
    state = load_checkpoint(run.checkpoints()[-1])
    assert state["selfplay"]["updates"] == list(range(0, 51, 5))


def test_self_play_resume_is_exact(tmp_path, servers, monkeypatch):
    """4 updates straight equal 2 updates, a stop, and a resume for 2 more: the pool (snapshots, results, sampler),
    the opponents each world drew, and the learner, bit for bit. Snapshots every update into a pool of 2, so one
    leaves it, and prioritised sampling, so the results steer the draws."""
    drawn: list[list[int]] = []  # per run: the opponents drawn, in order
    sample = SnapshotPool.sample

    def recorded(self, count):
        ids = sample(self, count)
        drawn[-1].extend(ids.tolist())
        return ids

    monkeypatch.setattr(SnapshotPool, "sample", recorded)
    common = [
        *DUEL,
        "env.num_worlds=8",
        "ppo.rollout_steps=20",
        "ppo.epochs=2",
        "run.checkpoint_every=2",
        "selfplay.snapshot_every=1",
        "selfplay.capacity=2",
        "selfplay.eval_every=2",
        "selfplay.eval_episodes=8",
    ]
    runs = {}
    for name, parts in (("straight", ["run.total_steps=640"]), ("resumed", ["run.total_steps=320"])):
        drawn.append([])
        config = load_config(None, [*common, *parts])
        runs[name] = Run.create(config, tmp_path / name)
        train(config, runs[name], servers)
        runs[name].close()
    resumed = Run.open(tmp_path / "resumed", ["run.total_steps=640"])
    drawn.append([])
    train(resumed.config, resumed, servers)
    resumed.close()
    assert drawn[0] == drawn[1] + drawn[2] and len(set(drawn[0])) >= 3, drawn
    a, b = load_checkpoint(runs["straight"].checkpoints()[-1]), load_checkpoint(resumed.checkpoints()[-1])
    assert a["update"] == b["update"] == 4
    pool_a, pool_b = a["selfplay"], b["selfplay"]
    assert pool_a["ids"] == pool_b["ids"] == [3, 4] and pool_a["updates"] == [3, 4]
    assert (pool_a["games"], pool_a["points"], pool_a["rng"]) == (pool_b["games"], pool_b["points"], pool_b["rng"])
    for snapshot_a, snapshot_b in zip(pool_a["actors"], pool_b["actors"], strict=True):
        assert all(torch.equal(snapshot_a[k], snapshot_b[k]) for k in snapshot_a)
    for name, tensor in a["policy"].items():
        assert torch.equal(tensor, b["policy"][name]), f"policy.{name} differs after resume"
    columns = ("return", "selfplay/win_rate", "selfplay/eval_win_rate", "selfplay/pool_size")
    rows_a = read_metrics(runs["straight"].directory / "metrics.csv")
    rows_b = read_metrics(resumed.directory / "metrics.csv")
    assert [[r[c] for c in columns] for r in rows_a] == [[r[c] for c in columns] for r in rows_b]
