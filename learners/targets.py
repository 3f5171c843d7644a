"""Target networks: a copy of an online network that trails it, by hard copies or Polyak averaging.

Value-based and off-policy actor-critic learners bootstrap from a target network so that the regression target
does not move with every gradient step (Mnih et al., 2015; Lillicrap et al., 2016)::

    target = make_target(q_net)                    # a frozen copy
    ...
    update_target(target, q_net, tau=1.0)          # every C gradient steps: a hard copy
    update_target(target, q_net, tau=0.005)        # every step: Polyak averaging

Both take one fused operation over all the parameters (and copy the floating buffers, such as a LayerNorm's or a
running normaliser's, as they are).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` that takes no gradients: the target network to register and checkpoint with it."""
    return copy.deepcopy(online).requires_grad_(False)


@torch.no_grad()
def hard_update(target: nn.Module, online: nn.Module) -> None:
    """Copy ``online``'s parameters and buffers into ``target``."""
    update_target(target, online, 1.0)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` for every parameter (buffers are copied)."""
    update_target(target, online, tau)


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """A hard copy (``tau >= 1``) or a Polyak step of rate ``tau`` (``0 < tau < 1``) of ``online`` into ``target``.

    Raises:
        ValueError: ``tau`` is not positive.
    """
    if tau <= 0:
        raise ValueError(f"tau = {tau}: use 1 for hard copies or a rate in (0, 1) for Polyak averaging")
    offline, live = list(target.parameters()), list(online.parameters())
    if tau >= 1.0:
        torch._foreach_copy_(offline, live)
    else:
        torch._foreach_lerp_(offline, live, tau)
    for mine, theirs in zip(target.buffers(), online.buffers(), strict=True):
        mine.copy_(theirs)
