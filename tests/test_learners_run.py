"""agora_marl.learners.config and learners.run: settings round-trips, the run directory, and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import ConfigError, load_config, save_config, to_toml
from agora_marl.learners.run import Run, RunDirError, load_checkpoint, read_metrics
from agora_marl.learners.training import train

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_parse_as_toml_and_the_saved_config_round_trips(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('algo = "ippo"\n[env]\nnum_worlds = 16\n[ppo]\nhidden = [32, 32]\nlr = 1e-3\n')
    config = load_config(
        path, ["ppo.lr=3e-4", "env.config.N=4", "run.total_steps=1e6", "env.connect=ipc:///a,ipc:///b"]
    )
    assert config.algo == "ippo" and config.env.num_worlds == 16 and config.algo_settings.hidden == [32, 32]
    assert config.algo_settings.lr == 3e-4 and config.run.total_steps == 1_000_000
    assert config.env.config == {"N": 4, "max_cycles": 25, "continuous_actions": False}  # merged onto the default
    assert config.env.connect == ["ipc:///a", "ipc:///b"]
    save_config(config, tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml") == config
    other = load_config(None, ["env.scenario=gymnasium:CartPole-v1", "algo=idqn"])
    assert other.env.config == {} and load_config(None, []).algo == "mappo"
    assert "[idqn]" in to_toml(other)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ppo.lrr=1", "unknown key(s) ['lrr'] in [ppo]"),
        ("bogus.x=1", "unknown config key(s) ['bogus']"),
        ("run.seed=abc", "run.seed = 'abc' is not a valid int"),
        ("algo=sac", "unknown algo 'sac'"),
        ("novalue", "is not key=value"),
    ],
)
def test_bad_settings_name_the_problem(override, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_run_directory_metrics_checkpoints_and_restore(tmp_path) -> None:
    config = load_config(None, ["run.keep_checkpoints=2"])
    run = Run.create(config, tmp_path / "run")
    for update in range(1, 5):
        run.log(update * 10, update, {"return": -float(update)} | ({"extra": 1.0} if update == 3 else {}))
        run.save_checkpoint({"step": update * 10, "update": update, "weights": torch.full((2,), float(update))})
    run.close()
    assert [p.name for p in run.checkpoints()] == ["update_0000003.pt", "update_0000004.pt"]
    rows = read_metrics(run.directory / "metrics.csv")
    assert (
        [r["step"] for r in rows] == ["10", "20", "30", "40"] and rows[2]["extra"] == "1.0" and rows[0]["extra"] == ""
    )
    assert list((run.directory / "tb").glob("events.out.tfevents.*"))
    with pytest.raises(RunDirError, match="--resume"):
        Run.create(config, run.directory)
    (run.checkpoints()[-1]).unlink()  # as if the job died after logging update 4 but before its checkpoint
    reopened = Run.open(run.directory, ["run.total_steps=123"])
    state = reopened.restore()
    assert state["update"] == 3 and torch.equal(state["weights"], torch.full((2,), 3.0))
    assert [r["step"] for r in read_metrics(run.directory / "metrics.csv")] == ["10", "20", "30"]
    assert load_config(run.directory / "config.toml").run.total_steps == 123


def test_the_end_of_an_update_says_when_to_log_checkpoint_and_stop(tmp_path) -> None:
    config = load_config(None, ["run.log_every=2", "run.checkpoint_every=3", "run.total_steps=100"])
    run = Run.create(config, tmp_path / "run")
    polls = iter([0, 9])  # polled at logged updates only, until one asks to stop
    run.stop_on(lambda: next(polls))
    ends = [run.end_update(10 * u, u, {"x": float(u)}) for u in range(1, 5)]
    assert [(e.logged, e.checkpoint, e.stop, e.final) for e in ends] == [
        (False, False, False, False),
        (True, False, False, False),
        (False, True, False, False),  # checkpoint_every
        (True, True, True, False),  # the stop request: checkpoint, then stop
    ]
    assert ends[-1].reason == 9 and config.run.checkpoint_every == 3  # nothing in the config changed
    last = run.end_update(100, 10, {"x": 10.0})  # the last update ends the run as usual, even after a stop request
    assert (last.logged, last.checkpoint, last.stop, last.final) == (True, True, False, True)
    run.close()
    assert [r["update"] for r in read_metrics(run.directory / "metrics.csv")] == ["2", "4", "10"]


@pytest.mark.parametrize("rollout", ["ppo.pipeline=1", "ppo.pipeline=3", "ppo.overlap=false"])
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, rollout) -> None:
    """Same seed, one rank: 4 updates straight equal 2 updates, a stop, and a resume for 2 more, bit for bit, with
    the rollout stepping the whole batch at once or three uneven parts of it in flight (4 worlds: rows 0-1, 2, 3),
    beside the previous update (ppo.overlap, the default: updates 1 and 3 run in the background, 2 and 4 end at
    checkpoints, alone), or strictly after it."""
    common = ["run.progress=false", "env.num_worlds=4", "run.checkpoint_every=2", "ppo.minibatches=2", "ppo.epochs=2"]
    common.append(rollout)
    with ServerProcesses(count=1) as servers:
        straight = load_config(None, [*common, "run.total_steps=400"])
        run = Run.create(straight, tmp_path / "straight")
        train(straight, run, servers.addresses)
        run.close()
        first = load_config(None, [*common, "run.total_steps=200"])
        part = Run.create(first, tmp_path / "resumed")
        train(first, part, servers.addresses)
        part.close()
        resumed = Run.open(tmp_path / "resumed", ["run.total_steps=400"])
        train(resumed.config, resumed, servers.addresses)
        resumed.close()
    a = load_checkpoint(run.checkpoints()[-1])
    b = load_checkpoint(resumed.checkpoints()[-1])
    assert a["update"] == b["update"] == 4
    for key in ("policy", "critics", "value_norms"):
        saved_a, saved_b = (a["policy"], b["policy"]) if key == "policy" else (a["state"][key], b["state"][key])
        for name, tensor in saved_a.items():
            assert torch.equal(tensor, saved_b[name]), f"{key}.{name} differs after resume"
    adam_a, adam_b = a["state"]["optimizer"]["state"][0], b["state"]["optimizer"]["state"][0]
    assert torch.equal(adam_a["exp_avg"], adam_b["exp_avg"])
    straight_rows = read_metrics(run.directory / "metrics.csv")
    resumed_rows = read_metrics(resumed.directory / "metrics.csv")
    assert [r["return"] for r in straight_rows] == [r["return"] for r in resumed_rows]


@pytest.mark.parametrize("path", sorted((ROOT / "launch" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path) -> None:
    config = load_config(path)
    assert to_toml(config).startswith(f'algo = "{config.algo}"')
