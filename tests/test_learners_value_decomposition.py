"""VDN and QMIX (learners/algorithms/value_decomposition.py): the monotonic mixer, the team TD target at episode
ends, and training through real servers: beating IDQN on homing_v0, exact resume, partial seats."""

from __future__ import annotations

import torch

from agora_marl.learners.networks import QMixer


def test_the_qmix_mixer_is_monotonic_in_every_agent_q_and_conditioned_on_the_state() -> None:
    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=5, embed_dim=8, hypernet_hidden=16)
    qs = torch.randn(256, 3, requires_grad=True)
    states = torch.randn(256, 5)
    q_tot = mixer(qs, states)
    assert q_tot.shape == (256,)
    (grad,) = torch.autograd.grad(q_tot.sum(), qs)
    assert (grad >= 0).all() and (grad > 0).any()  # raising one agent's Q never lowers the team's
    assert not torch.allclose(mixer(qs, states), mixer(qs, torch.randn(256, 5)))
