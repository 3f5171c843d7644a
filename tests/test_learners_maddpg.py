"""MADDPG (learners/algorithms/maddpg.py) and its parts: the Gumbel-softmax and deterministic heads, the centralized
Q(s, a) critic, and training through real servers: learning continuous simple_spread, exact resume, partial seats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agora_marl.learners.networks import (
    CentralQCritic,
    DeterministicHead,
    GumbelSoftmaxHead,
    make_differentiable_head,
)


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
