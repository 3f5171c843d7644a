"""Schedules of the training step: exploration rates and learning rates as plain functions.

A schedule is a function of the step (or update) alone, so it needs no state in a checkpoint: a resumed run
computes the same value at the same step. ::

    epsilon = linear(session.step, start=1.0, end=0.05, duration=0.2 * session.total_steps)
    set_lr(optimizer, linear(update, start=settings.lr, end=0.0, duration=total_updates))
"""

from __future__ import annotations

import torch


def linear(t: float, start: float, end: float, duration: float) -> float:
    """``start`` at ``t = 0``, moving linearly to ``end`` at ``t = duration``, then ``end``.

    ``duration`` at most 0: ``end`` from the start.
    """
    if duration <= 0 or t >= duration:
        return float(end)
    return float(start + (end - start) * max(t, 0.0) / duration)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
