"""Step rates of a scenario in process, for ``agora scenarios check``: one world, and the vectorised batch.

Measurements, not pass/fail checks (scenarios/check.py holds those). The served rates (one world in lockstep, K
worlds batched) are measured with the wire check in launch/scenario_wire.py, through the same :func:`rate_of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from agora_marl.scenarios.check import CheckSettings, samplers
from agora_marl.scenarios.registry import make_vector


@dataclass
class RateSettings:
    """How long, and how wide, the step rates are measured."""

    seconds: float = 1.0
    """Time spent measuring each step rate."""
    batch_worlds: int = 256
    """K of the vectorised and served batched step rates."""


def rate_of(fn: Callable[[], Any], seconds: float, per_call: int, unit: str) -> str:
    """Call ``fn`` (which does ``per_call`` steps) for about ``seconds``; the rate as text."""
    fn()  # warm up caches and lazy imports outside the timing
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds and calls < 1_000_000:
        fn()
        calls += 1
    return f"{calls * per_call / max(elapsed, 1e-9):,.0f} {unit}"


def play(env: ParallelEnv, steps: int) -> None:
    """``steps`` steps of fixed actions (the first sample of each space), resetting as episodes end."""
    actions = {a: env.action_space(a).sample() for a in env.possible_agents}
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({a: actions[a] for a in env.agents})


def batch_actions(env: ParallelEnv, seed: int, k: int) -> dict[str, np.ndarray]:
    """One fixed batch of actions for ``k`` worlds: ``{agent: (k, *action_shape)}``, seeded."""
    return {a: np.stack([space.sample() for _ in range(k)]) for a, space in samplers(env, seed).items()}


def measure_in_process(name: str, settings: CheckSettings, rates: RateSettings, out: dict[str, str]) -> str:
    """Add the in-process step rates of scenario ``name`` to ``out``; return the ``step rates`` row's detail."""
    env = settings.build(name)
    env.reset(seed=settings.seed)
    n = len(env.possible_agents)
    out["in process, 1 world"] = rate_of(lambda: play(env, 64), rates.seconds, 64, "steps/s")
    env.close()
    k = rates.batch_worlds
    vector = make_vector(name, k, settings.config)
    if vector is None:
        return f"{n} agents per world"
    vector.reset(seed=settings.seed)
    actions = batch_actions(settings.build(name), settings.seed, k)

    def batch_step() -> None:
        # What a server does per batched step: step every copy, reset the finished ones.
        _, _, terminated, truncated = vector.step(actions)
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            vector.reset(copies=done)

    out[f"in process, vectorised K={k}"] = rate_of(batch_step, rates.seconds, k, "world-steps/s")
    return f"{n} agents per world"
