"""docs/libraries.md's Stable-Baselines3 recipes, run against a real agora server: SuperSuit's parameter sharing
(examples/sb3_spread.py, seeded) and a single seat (SeatEnv)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import stable_baselines3 as sb3  # the test extra installs it and supersuit (pyproject.toml)
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agora_marl.agents import SeatEnv

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sb3_spread.py"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The recipe's own setting (its --threads): a small MLP on several threads is many times slower on a busy
    machine (docs/libraries.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recipe():
    spec = importlib.util.spec_from_file_location("sb3_spread", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameters(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def test_the_seeded_recipe_trains_through_the_server_and_repeats_itself(make_server):
    recipe = _recipe()
    server = make_server()
    small = {"n_steps": 50, "batch_size": 150, "n_epochs": 2}  # 2 worlds x 3 agents x 50 = 300 samples per rollout
    runs = []
    for seed in (3, 3, 4):
        before = server.stats["steps"]
        model = recipe.train(server.address, 300, seed, worlds=2, **small)
        # Every sample SB3 saw is one agent's share of a world-step the server made: 3 per step of one world.
        assert server.stats["steps"] - before == model.num_timesteps // 3 == 100
        assert not server.worlds  # the worlds closed with the env, the one SuperSuit copied included
        runs.append((model.rollout_buffer.observations.copy(), _parameters(model)))
    (obs_a, params_a), (obs_b, params_b), (obs_c, params_c) = runs
    # The same seed: the same worlds' episodes (PPO(seed=) reached them) and the same model.
    np.testing.assert_array_equal(obs_a, obs_b)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    # Each world its own episodes (world k seeded seed + k); another seed, other episodes.
    assert not np.array_equal(obs_a[0, 0], obs_a[0, 3])  # agent_0 of world 0 and of world 1, first step
    assert not np.array_equal(obs_a, obs_c)


def test_the_recipe_command_line_trains_saves_and_compares_with_random(server, tmp_path, monkeypatch, capsys):
    recipe = _recipe()
    save = tmp_path / "model"
    argv = [str(EXAMPLE), server.address, "--timesteps", "300", "--worlds", "1", "--episodes", "2", "--threads", "0"]
    monkeypatch.setattr("sys.argv", [*argv, "--save", str(save)])
    monkeypatch.setattr(recipe, "SETTINGS", {**recipe.SETTINGS, "n_steps": 50, "batch_size": 150, "n_epochs": 1})
    recipe.main()
    out = capsys.readouterr().out
    assert "trained 300 agent-steps" in out and "model: team return" in out and "random: team return" in out, out
    assert sb3.PPO.load(save).num_timesteps == 300


class _SlowUpdate(BaseCallback):
    """An update longer than the server's heartbeat timeout (a big network, a loaded machine)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        time.sleep(self.seconds)


def test_stable_baselines3_on_a_seat_env_keeps_its_world_through_a_long_update(make_server):
    server = make_server(heartbeat_timeout_s=0.5)
    env = SeatEnv(server.address, scenario="gymnasium:CartPole-v1", timeout_s=10.0)
    try:
        model = sb3.PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0)
        model.learn(total_timesteps=64, callback=_SlowUpdate(1.2))
        assert model.num_timesteps == 64
    finally:
        env.close()
