"""agora_marl.learners.ppo and its parts: GAE, action heads, teams, value normalisation, and training through a real server."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners.config import load_config
from agora_marl.learners.networks import RunningNorm, make_head
from agora_marl.learners.policy import form_teams
from agora_marl.learners.rollout import gae
from agora_marl.learners.run import Run, read_metrics
from agora_marl.learners.trained import evaluate, load_run_policy, load_trained_policy
from agora_marl.learners.training import train

SPREAD_RANDOM_RETURN = -81.0  # mean team return of uniformly random play (REFERENCE-FIGURES.md)


@pytest.fixture(scope="module")
def servers() -> list[str]:
    with ServerProcesses(count=1) as local:
        yield local.addresses


def _train(tmp_path, addresses, *overrides):
    config = load_config(None, ["run.progress=false", *overrides])
    run = Run.create(config, tmp_path / "run")
    try:
        metrics = train(config, run, addresses)
    finally:
        run.close()
    return run, metrics


def test_gae_bootstraps_truncation_not_termination() -> None:
    """One agent, 4 steps: an episode truncated at t=1 (bootstrap from its final value), one terminated at t=3."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    values = torch.tensor([0.5, 0.6, 0.7, 0.8])
    next_values = torch.tensor([0.6, 10.0, 0.8, 99.0])  # 10: value of the truncated episode's final observation
    terminated = torch.tensor([False, False, False, True])
    ended = torch.tensor([False, True, False, True])
    gamma, lam = 0.9, 0.8
    adv = gae(rewards, values, next_values, terminated, ended, gamma, lam)
    d = [1 + 0.9 * 0.6 - 0.5, 2 + 0.9 * 10 - 0.6, 3 + 0.9 * 0.8 - 0.7, 4 - 0.8]
    expected = [d[0] + gamma * lam * d[1], d[1], d[2] + gamma * lam * d[3], d[3]]
    assert torch.allclose(adv, torch.tensor(expected))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Discrete(5, start=2),
        spaces.MultiDiscrete([3, 4]),
        spaces.Box(-2.0, 1.0, (3,), np.float32),
    ],
    ids=["discrete", "multidiscrete", "box"],
)
def test_heads_score_their_samples_like_torch_distributions(space) -> None:
    torch.manual_seed(0)
    head = make_head(8, space)
    params = head(torch.randn(256, 8) * 3)
    actions, log_probs = head.sample(params)
    again, entropy = head.evaluate(params, actions)
    assert torch.allclose(log_probs, again, atol=1e-5)
    if isinstance(space, spaces.Discrete):
        reference = torch.distributions.Categorical(logits=params)
        assert torch.allclose(log_probs, reference.log_prob(actions), atol=1e-5)
        assert torch.allclose(entropy, reference.entropy(), atol=1e-5)
    if isinstance(space, spaces.Box):
        reference = torch.distributions.Normal(params, head.log_std.exp())
        assert torch.allclose(log_probs, reference.log_prob(actions).sum(-1), atol=1e-4)
        assert torch.allclose(entropy, reference.entropy().sum(-1), atol=1e-5)
    values = head.to_env(actions)
    assert values.shape == (256, *space.shape)
    assert all(space.contains(v) for v in (values if values.ndim > 1 else values.astype(np.int64)))


def test_box_actions_are_clipped_or_squashed_into_bounds() -> None:
    space = spaces.Box(np.array([0.0, -1.0], np.float32), np.array([1.0, 3.0], np.float32))
    raw = torch.tensor([[-5.0, 5.0], [0.0, 0.0]])
    clipped = make_head(4, space, "clip").to_env(raw)
    squashed = make_head(4, space, "squash").to_env(raw)
    assert np.allclose(clipped, [[0.0, 3.0], [0.0, 0.0]])
    assert np.allclose(squashed[1], [0.5, 1.0]) and (squashed[0] > space.low).all() and (squashed[0] < space.high).all()


def test_teams_group_by_name_prefix_and_spaces() -> None:
    box = spaces.Box(-1, 1, (4,))
    wide = spaces.Box(-1, 1, (6,))
    agents = ["adversary_0", "adversary_1", "agent_0", "agent_1"]
    obs = {"adversary_0": box, "adversary_1": box, "agent_0": wide, "agent_1": wide}
    act = dict.fromkeys(agents, spaces.Discrete(5))
    assert form_teams(agents, obs, act) == [("adversary", agents[:2]), ("agent", agents[2:])]
    assert [name for name, _ in form_teams(agents, obs, act, share="none")] == agents


def test_running_norm_merges_batches_exactly() -> None:
    data = np.random.default_rng(0).normal(3.0, 2.0, 1000)
    norm = RunningNorm()
    for part in np.split(data, [100, 350, 900]):
        norm.update(part.mean(), part.var(), len(part))
    assert float(norm.mean) == pytest.approx(data.mean()) and float(norm.var) == pytest.approx(data.var())


@pytest.mark.slow
def test_mappo_learns_simple_spread_past_random_play(tmp_path, servers) -> None:
    """A CI-sized MAPPO run (40K steps) beats random play (-81) by a clear margin, played greedily."""
    run, metrics = _train(tmp_path, servers, "run.total_steps=40000", "env.num_worlds=32")
    assert metrics["explained_variance"] > 0.5
    returns = evaluate(
        load_trained_policy(run.directory), servers, run.config.env.scenario, run.config.env.config, episodes=64
    )
    assert returns.mean() > SPREAD_RANDOM_RETURN + 15, returns.mean()


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=ippo", "env.config.continuous_actions=true", "ppo.overlap=false"],  # updates strictly after rollouts
        ["env.scenario=mpe2.simple_tag_v3:parallel_env", "env.config={max_cycles = 25}", "ppo.critic_obs=true"],
        ["algo=ippo", "ppo.share=none", "ppo.value_norm=false", "ppo.minibatches=2"],
        ["algo=ippo", "env.scenario=foraging_v0", "ppo.pipeline=2"],  # vector-backed: one group per part
    ],
    ids=["ippo-continuous-serial", "mappo-two-teams", "ippo-separate-networks", "ippo-vector-backed-pipelined"],
)
def test_variants_train_and_log_finite_losses(tmp_path, servers, overrides) -> None:
    run, metrics = _train(tmp_path, servers, "run.total_steps=2000", "env.num_worlds=4", *overrides)
    rows = read_metrics(run.directory / "metrics.csv")
    assert len(rows) == 20  # 2000 steps / (4 worlds x 25 steps)
    assert all(np.isfinite(float(rows[-1][key])) for key in ("loss/policy", "loss/value", "entropy"))
    policy = load_trained_policy(run.directory)
    observations = {a: np.zeros((2, *policy.observation_spaces[a].shape), np.float32) for a in policy.possible_agents}
    actions = policy.act(observations)
    assert all(policy.action_spaces[a].contains(actions[a][0]) for a in policy.possible_agents)
    seat = policy.possible_agents[-1]
    play = load_run_policy(run.directory, policy.observation_spaces[seat], policy.action_spaces[seat], agent=seat)
    assert policy.action_spaces[seat].contains(play(observations[seat][0]))
