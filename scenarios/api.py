"""The small API for authoring a world: the author writes its rules in a :class:`Scenario`; :class:`ScenarioEnv`
does PettingZoo's bookkeeping once for every scenario.

A scenario is a class with the world's rules and nothing else::

    class Beacon(Scenario):
        name = "beacon_v0"
        max_cycles = 50

        def __init__(self, n_agents=2):
            self.possible_agents = [f"agent_{i}" for i in range(n_agents)]

        def observation_space(self, agent): return Box(-1, 1, (4,), np.float32)
        def action_space(self, agent): return Discrete(5)
        def reset(self): ...            # draw the start from self.rng
        def step(self, actions): ...    # actions of the live agents
        def observe(self, agent): ...
        def reward(self, agent): ...

    parallel_env = scenario_env(Beacon)  # a PettingZoo ParallelEnv constructor
    register("beacon_v0", parallel_env, "agents walk to a beacon")

The adapter keeps the live ``agents`` list (an agent leaves it when terminated or truncated), truncates every agent
after ``max_cycles`` steps, seeds ``scenario.rng`` from ``reset(seed=...)`` (a reset without a seed continues the
generator, so a seeded world replays exactly), caches the spaces, and fills ``metadata`` (name,
``is_parallelizable``, render modes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from gymnasium.spaces import Space
from pettingzoo import ParallelEnv


class Scenario:
    """The rules of one world. Subclass it and override the methods documented as required.

    Per episode the adapter calls ``reset()``, then for every step ``step(actions)`` followed by ``observe``,
    ``reward``, ``terminated`` and ``info`` for each agent that was alive at the start of the step.

    Attributes:
        name: versioned name for ``metadata`` and listings; bump the version when dynamics or rewards change.
        max_cycles: steps after which every live agent is truncated. The adapter's ``max_cycles`` (a constructor
            argument of the env, or set on the env later) reads and writes this attribute, so the rules may use it.
        render_fps: frames per second for recordings of ``render()``.
        possible_agents: every agent id, set by the subclass (class attribute or in ``__init__``).
        rng: the world's seeded generator, set by the adapter before ``reset()``. Draw every random number from it,
            never from ``np.random`` or ``random``: that is what makes a seeded world replay exactly.
    """

    name: ClassVar[str] = "scenario_v0"
    max_cycles: int = 100
    render_fps: ClassVar[int] = 10
    possible_agents: list[str]
    rng: np.random.Generator

    def observation_space(self, agent: str) -> Space:
        """Required: the observation space of ``agent`` (called once per agent; the adapter caches it)."""
        raise NotImplementedError

    def action_space(self, agent: str) -> Space:
        """Required: the action space of ``agent`` (called once per agent; the adapter caches it)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Required: set up a new episode (positions, levels...) from ``self.rng``."""
        raise NotImplementedError

    def step(self, actions: dict[str, Any]) -> None:
        """Required: advance the world one step. ``actions`` holds exactly the live agents' actions."""
        raise NotImplementedError

    def observe(self, agent: str) -> Any:
        """Required: ``agent``'s observation of the current world (a value of its observation space)."""
        raise NotImplementedError

    def reward(self, agent: str) -> float:
        """Required: ``agent``'s reward for the step just taken."""
        raise NotImplementedError

    def terminated(self, agent: str) -> bool:
        """Whether ``agent``'s episode has ended in the world (caught, done...). Default: never."""
        return False

    def info(self, agent: str) -> dict:
        """Extra per-agent information for this step (plain values). Default: empty."""
        return {}

    def state_space(self) -> Space | None:
        """The space of the global state (for centralized critics), or ``None`` if ``state()`` is not defined."""
        return None

    def state(self) -> np.ndarray:
        """The global state of the world, a value of ``state_space()``."""
        raise NotImplementedError(f"{type(self).__name__} defines no global state")

    def noop_action(self, agent: str) -> Any:
        """The action that does nothing, used by servers to fill a missing seat; ``None``: the space's neutral value."""
        return None

    def render(self) -> np.ndarray:
        """Optional: an RGB picture of the world, uint8 of shape (height, width, 3)."""
        raise NotImplementedError(f"{type(self).__name__} does not render")


class ScenarioEnv(ParallelEnv):
    """A :class:`Scenario` as a PettingZoo ParallelEnv.

    Args:
        scenario: the world's rules.
        render_mode: ``"rgb_array"`` (if the scenario renders) or ``None``.
        max_cycles: override of ``scenario.max_cycles``.
    """

    def __init__(self, scenario: Scenario, render_mode: str | None = None, max_cycles: int | None = None):
        self.scenario = scenario
        self.possible_agents = list(scenario.possible_agents)
        if not self.possible_agents or len(set(self.possible_agents)) != len(self.possible_agents):
            raise ValueError(f"{type(scenario).__name__}.possible_agents must be non-empty and unique")
        self.agents: list[str] = []
        if max_cycles is not None:
            self.max_cycles = max_cycles
        renders = type(scenario).render is not Scenario.render
        self.metadata = {
            "name": scenario.name,
            "is_parallelizable": True,
            "render_modes": ["rgb_array"] if renders else [],
            "render_fps": scenario.render_fps,
        }
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.observation_spaces = {a: scenario.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: scenario.action_space(a) for a in self.possible_agents}
        state_space = scenario.state_space()
        if state_space is not None:
            self.state_space = state_space
        self.num_cycles = 0
        self._seeded = False

    @property
    def max_cycles(self) -> int:
        """Steps after which every live agent is truncated (the scenario's ``max_cycles``)."""
        return self.scenario.max_cycles

    @max_cycles.setter
    def max_cycles(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_cycles must be at least 1, got {value}")
        self.scenario.max_cycles = int(value)

    def observation_space(self, agent: str) -> Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None or not self._seeded:
            self.scenario.rng = np.random.default_rng(seed)
            self._seeded = True
        self.agents = list(self.possible_agents)
        self.num_cycles = 0
        self.scenario.reset()
        obs = {a: self.scenario.observe(a) for a in self.agents}
        return obs, {a: self.scenario.info(a) for a in self.agents}

    def step(self, actions: dict[str, Any]):
        live = self.agents
        missing = [a for a in live if a not in actions]
        if missing:
            raise ValueError(f"no action for live agents {missing}; every agent in env.agents must act")
        scenario = self.scenario
        scenario.step({a: actions[a] for a in live})
        self.num_cycles += 1
        out_of_time = self.num_cycles >= self.max_cycles
        obs = {a: scenario.observe(a) for a in live}
        rewards = {a: float(scenario.reward(a)) for a in live}
        terminated = {a: bool(scenario.terminated(a)) for a in live}
        truncated = {a: out_of_time and not terminated[a] for a in live}
        infos = {a: scenario.info(a) for a in live}
        self.agents = [a for a in live if not (terminated[a] or truncated[a])]
        return obs, rewards, terminated, truncated, infos

    def state(self) -> np.ndarray:
        return self.scenario.state()

    def noop_action(self, agent: str) -> Any:
        """The scenario's no-op for ``agent``, or ``None`` where it declares none."""
        return self.scenario.noop_action(agent)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.scenario.render()


def scenario_env(scenario_cls: Callable[..., Scenario]) -> Callable[..., ScenarioEnv]:
    """A PettingZoo-style constructor ``parallel_env(render_mode=None, max_cycles=None, **config)`` for a scenario.

    ``config`` goes to the scenario's own constructor. Register the result with :func:`scenarios.register`.
    """

    def parallel_env(render_mode: str | None = None, max_cycles: int | None = None, **config) -> ScenarioEnv:
        return ScenarioEnv(scenario_cls(**config), render_mode=render_mode, max_cycles=max_cycles)

    parallel_env.__doc__ = f"A {getattr(scenario_cls, 'name', scenario_cls.__name__)} world as a ParallelEnv."
    return parallel_env
