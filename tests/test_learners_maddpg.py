"""MADDPG (learners/algorithms/maddpg.py) and its parts: the Gumbel-softmax and deterministic heads, the centralized
Q(s, a) critic, and training through real servers: learning continuous simple_spread, exact resume with Box actions,
Gumbel-softmax predators beside a prey process. The rest of the contract (discrete resume, partial seats, self-play,
eval, play): ``agora learners check`` (tests/test_learners_check.py); two MPI ranks: test_learners_value_decomposition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agora_marl.envserver.process import ServerProcesses
from agora_marl.launch.matches import side_policy, trained_run
from agora_marl.learners.config import load_config
from agora_marl.learners.networks import (
    CentralQCritic,
    DeterministicHead,
    GumbelSoftmaxHead,
    make_differentiable_head,
)
from agora_marl.learners.run import Run, TrainingStopped, read_metrics
from agora_marl.learners.trained import evaluate, load_trained_policy
from agora_marl.learners.training import train


def test_the_gumbel_softmax_head_is_one_hot_forward_and_differentiable_backward() -> None:
    torch.manual_seed(0)
    head = GumbelSoftmaxHead(4, spaces.Discrete(5, start=2))
    features = torch.randn(64, 4, requires_grad=True)
    logits = head(features)
    relaxed = head.relaxed(logits, temperature=0.5)
    one_hot = torch.nn.functional.one_hot(relaxed.detach().argmax(1), 5).float()
    assert relaxed.shape == (64, 5) and torch.allclose(relaxed.detach(), one_hot)
    (relaxed * torch.arange(5.0)).sum().backward()  # the straight-through estimator passes the softmax's gradient
    assert features.grad is not None and features.grad.abs().sum() > 0
    # Environment values include the space's start; the critic reads one-hot indices.
    chosen = head.explore(logits.detach())
    values = head.to_env(chosen)
    assert values.dtype == np.int64 and values.min() >= 2 and values.max() <= 6
    assert torch.equal(head.from_env(torch.from_numpy(values)), chosen)
    assert torch.equal(head.encode(chosen).argmax(1), chosen)
    assert torch.equal(head.mode(logits), logits.argmax(1))


def test_a_multi_discrete_gumbel_head_encodes_each_component() -> None:
    head = GumbelSoftmaxHead(3, spaces.MultiDiscrete([2, 3], start=[1, 0]))
    logits = head(torch.randn(8, 3))
    chosen = head.explore(logits)
    assert chosen.shape == (8, 2) and head.action_dim == 5
    encoded = head.encode(chosen)
    assert torch.equal(encoded[:, :2].sum(1), torch.ones(8)) and torch.equal(encoded[:, 2:].sum(1), torch.ones(8))
    values = head.to_env(chosen)
    assert values[:, 0].min() >= 1 and torch.equal(head.from_env(torch.from_numpy(values)), chosen)
    assert head.relaxed(logits).shape == (8, 5)


def test_the_deterministic_head_stays_in_bounds_and_explores_with_scaled_noise() -> None:
    torch.manual_seed(0)
    space = spaces.Box(np.array([0, -2], np.float32), np.array([1, 2], np.float32))
    head = DeterministicHead(3, space)
    with torch.no_grad():
        head.linear.weight.mul_(1000)  # saturate: the tanh keeps actions inside the bounds
    actions = head(torch.randn(256, 3))
    assert actions[:, 0].min() >= 0 and actions[:, 0].max() <= 1 and actions[:, 1].abs().max() <= 2
    noisy = head.explore(torch.zeros(4096, 2) + head.center, noise=0.1)
    assert noisy[:, 1].std() == pytest.approx(0.2, rel=0.1) and noisy[:, 0].std() == pytest.approx(0.05, rel=0.1)
    assert noisy[:, 0].min() >= 0 and noisy[:, 1].abs().max() <= 2
    assert head.encode(head.center + head.scale).tolist() == [1.0, 1.0]  # the critic reads [-1, 1]
    assert head.to_env(actions).dtype == np.float32 and head.to_env(actions).shape == (256, 2)
    assert head.relaxed(actions).requires_grad
    with pytest.raises(ValueError, match="finite bounds"):
        DeterministicHead(3, spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ValueError, match="not supported"):
        make_differentiable_head(3, spaces.MultiBinary(2))


def test_the_central_critic_reads_the_context_and_every_agents_action() -> None:
    critic = CentralQCritic(6, [5, 2], hidden=[32, 32])
    context = torch.randn(16, 6)
    actions = [torch.randn(16, 5, requires_grad=True), torch.randn(16, 2, requires_grad=True)]
    q = critic(context, actions)
    assert q.shape == (16,)
    q.sum().backward()
    assert all(a.grad.abs().sum() > 0 for a in actions)


@pytest.fixture(scope="module")
def server() -> list[str]:
    with ServerProcesses(count=1) as servers:
        yield servers.addresses


SPREAD = ["algo=maddpg", "env.config.continuous_actions=true", "run.progress=false"]


def _train(directory: Path, server: list[str], overrides: list[str], stop_after: int = 0) -> Run:
    """Train a new run; with ``stop_after``, stop it (as a SIGTERM would) after that many logged updates."""
    run = Run.create(load_config(None, overrides), directory)
    if stop_after:
        polls = iter([0] * (stop_after - 1) + [1])
        run.stop_on(lambda: next(polls))
    try:
        train(run.config, run, server)
    except TrainingStopped:
        assert stop_after, "the run stopped without being asked to"
    run.close()
    return run


def test_maddpg_resumes_exactly_with_box_actions(tmp_path: Path, server: list[str]) -> None:
    """4 updates straight equal 2, a stop and 2 more, bit for bit: actors, critics, their targets and optimizers,
    the replay buffer, and the metrics (the exploration noise is drawn from torch's reseeded generator)."""
    common = [*SPREAD, "env.num_worlds=8", "run.checkpoint_every=2", "run.total_steps=512", "maddpg.batch_size=32"]
    common += ["maddpg.learning_starts=128", "maddpg.gradient_steps=2"]
    straight = _train(tmp_path / "straight", server, common)
    _train(tmp_path / "resumed", server, common, stop_after=2)
    resumed = Run.open(tmp_path / "resumed")
    train(resumed.config, resumed, server)
    resumed.close()
    a, b = (torch.load(r.checkpoints()[-1], weights_only=True) for r in (straight, resumed))
    assert a["update"] == b["update"] == 4 and a["per_rank"][0]["replay"]["size"] == 512
    assert a["state"]["counters"]["gradient_steps"] == 8  # learning from the first update on (its 128 steps)
    _assert_equal(a["policy"], b["policy"], "policy")
    _assert_equal(a["state"], b["state"], "state")
    _assert_equal(a["per_rank"], b["per_rank"], "per_rank")
    rows = [read_metrics(r.directory / "metrics.csv") for r in (straight, resumed)]
    timing = ("time_s", "steps_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[0]] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows[1]
    ]
    assert rows[0][-1]["loss_critic"] and rows[0][-1]["return"]


def _assert_equal(left, right, where: str) -> None:
    if isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            _assert_equal(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list):
        for i, (x, y) in enumerate(zip(left, right, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(left, torch.Tensor):
        assert torch.equal(left, right), f"{where} differs after resume"
    else:
        assert left == right, f"{where} differs after resume"


def test_maddpg_predators_with_gumbel_actors_train_beside_a_prey_process(tmp_path: Path, server: list[str], capfd):
    """Partial seats, discrete actions: the predators of predator_prey_v0 against a random prey process. No state
    is granted: the team's critic reads the three predators' joint observation and their one-hot actions."""
    overrides = ["algo=maddpg", "env.scenario=predator_prey_v0", "env.seats=predator_*", "env.num_worlds=8"]
    overrides += ["run.total_steps=512", "run.progress=false", "maddpg.learning_starts=128", "maddpg.gradient_steps=2"]
    overrides += ["maddpg.batch_size=32"]
    run = _train(tmp_path / "predators", server, overrides)
    assert "no global state; the critics read their joint observation" in capfd.readouterr().out
    state = torch.load(run.checkpoints()[-1], weights_only=True)
    assert state["seats"] == ["predator_0", "predator_1", "predator_2"]
    assert state["state"]["counters"]["gradient_steps"] > 0
    first_layer = state["state"]["critics"]["predator.trunk.0.weight"]
    assert first_layer.shape[1] == 3 * 9 + 3 * 5  # joint observation + one-hot actions of the three predators
    policy = load_trained_policy(tmp_path / "predators")
    moves = policy.act({"predator_1": np.zeros((4, 9), np.float32)}, greedy=False)["predator_1"]
    assert moves.shape == (4,) and moves.dtype == np.int64 and ((moves >= 0) & (moves < 5)).all()


@pytest.mark.slow
def test_maddpg_learns_continuous_simple_spread_far_above_random(tmp_path: Path, server: list[str]) -> None:
    """Two agents, Box actions, 10,000 steps (about a third of MADDPG's budget for three agents in
    docs/learners.md). Measured with these settings, greedy over 64 episodes: seed 1 -27.9 (8,000 steps: seeds 2 and
    3 -35.0 and -33.2), where random play scores -44.9, doing nothing -43.7 and the scripted policy -10.2."""
    config = {"N": 2, "max_cycles": 25, "continuous_actions": True}
    overrides = [*SPREAD, "env.config.N=2", "env.num_worlds=16", "run.total_steps=10000", "run.seed=1"]
    _train(tmp_path / "spread", server, overrides)
    scenario = "mpe2.simple_spread_v3:parallel_env"
    trained = evaluate(load_trained_policy(tmp_path / "spread"), server, scenario, config, episodes=64).mean()
    spec = trained_run(tmp_path / "spread").spec
    baselines = {
        name: evaluate(side_policy(name, spec.possible_agents, spec, seed=1), server, scenario, config, 64).mean()
        for name in ("random", "noop")
    }
    assert trained > max(baselines.values()) + 8, (trained, baselines)
