"""The vectorised form of a scenario: K copies of one world stepped together with numpy operations across copies.

A server that hosts K worlds of a scenario for one learner steps them all with one call to
:meth:`VectorScenario.step` instead of K calls to a ParallelEnv: this is where a fast world pays off.

Contract (what a server may rely on):

- ``reset(seed, copies)`` resets every copy (``copies=None``) or only the listed ones and returns the observations
  of **all** copies, ``{agent: (K, *obs_shape)}``. With a seed, copy ``i`` is seeded ``seed + i``, so copy ``i``
  replays exactly the per-copy form reset with ``seed + i``; without one, each copy continues its own generator.
- ``step(actions)`` takes ``{agent: (K, *action_shape)}`` and returns ``(obs, rewards, terminated, truncated)``
  with rewards ``float32 (K, N)`` and flags ``bool (K, N)``, columns in ``possible_agents`` order. Actions are
  arrays of the action space's dtype, already checked against the space by the server: ``Discrete`` actions are
  ints ``(K,)``, ``Box`` (continuous) ones ``(K, *shape)`` inside the bounds, ``MultiDiscrete`` ``(K, n)``.
  Every agent of a copy stays alive until its copy's episode ends; a copy's episode ends at the step where any of
  its flags is set, and the scenario sets the flags of all its agents at that step. ``step`` never resets: the
  caller resets finished copies (``reset(copies=done)``) before stepping them again, and the ``obs`` of that step
  are the finished copies' final observations (``final_obs`` on the wire).
- Truncation is the scenario's own: count the steps of each copy and set ``truncated`` for all its agents at the
  limit (``max_cycles`` names it; nothing truncates for you, unlike the per-copy ``Scenario`` adapter).
  ``terminated`` is for real ends (a terminal state is worth zero to a learner), ``truncated`` for time limits
  (learners bootstrap from the final observation).
- ``state()`` returns ``(K, *state_shape)`` when ``state_space`` is not ``None``.
- Returned arrays are fresh (C-contiguous, one per agent): the scenario never writes into them later, so the caller
  may keep or send them without copying.
- Rendering is optional: define ``render(self, copy=0)`` returning copy ``copy`` as an RGB ``uint8 (H, W, 3)``
  array. Then the per-copy form (:func:`vector_env`) declares ``metadata["render_modes"] == ["rgb_array"]`` and
  ``metadata["render_fps"] == render_fps`` (what ``agora record`` needs), and a server draws a vector-backed world
  with ``render(its copy index)``. Without it neither form renders (``agora scenarios check`` says so).

:class:`VectorParallelEnv` turns a vectorised scenario with one copy into an ordinary PettingZoo ParallelEnv, so a
scenario written only in vectorised form has its per-copy form for free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from gymnasium.spaces import Space
from pettingzoo import ParallelEnv


class VectorScenario:
    """K copies of one world. Subclass it; call ``super().__init__(num_copies)`` and set the spaces.

    Attributes:
        name: versioned name, as for :class:`agora_marl.scenarios.api.Scenario`.
        max_cycles: steps after which a copy's agents are truncated (the subclass counts and sets ``truncated``).
        render_fps: frames per second for recordings (the per-copy form's ``metadata["render_fps"]``).
        possible_agents: every agent id; column j of the reward and flag arrays is ``possible_agents[j]``.
        num_copies: K.
        observation_spaces, action_spaces: per agent, for one copy (arrays carry a leading K dimension).
        state_space: space of one copy's global state, or ``None``.
        rngs: one seeded generator per copy (see :meth:`seed_copies`).
    """

    name: ClassVar[str] = "vector_scenario_v0"
    max_cycles: ClassVar[int] = 100
    render_fps: ClassVar[int] = 10
    possible_agents: list[str]
    observation_spaces: dict[str, Space]
    action_spaces: dict[str, Space]
    state_space: Space | None = None

    def __init__(self, num_copies: int):
        if int(num_copies) < 1:
            raise ValueError(f"num_copies must be at least 1, got {num_copies}")
        self.num_copies = int(num_copies)
        self.rngs: list[np.random.Generator | None] = [None] * self.num_copies

    def seed_copies(self, seed: int | None, copies: np.ndarray | None) -> np.ndarray:
        """Seed copy ``i`` with ``seed + i`` (or continue its generator without a seed); return the copy indices.

        Returns:
            The indices of the copies to reset, an int array (``np.intp``): ``0 .. K-1`` for ``copies=None``, else
            ``copies`` flattened. Index the copies' arrays with it (``self.pos[index] = ...``).

        Raises:
            IndexError: a listed copy is outside ``0 .. K-1``.
        """
        index = np.arange(self.num_copies) if copies is None else np.asarray(copies, dtype=np.intp).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self.num_copies):
            raise IndexError(f"copies {index.tolist()} outside 0..{self.num_copies - 1}")
        for i in index.tolist():
            if seed is not None:
                self.rngs[i] = np.random.default_rng(int(seed) + i)
            elif self.rngs[i] is None:
                self.rngs[i] = np.random.default_rng()
        return index

    def uniforms(self, index: np.ndarray, size: int) -> np.ndarray:
        """``size`` uniform numbers in [0, 1) from each listed copy's generator, as a ``(len(index), size)`` array.

        Row ``j`` comes from copy ``index[j]``'s generator (float64), so a copy draws the same numbers whether it is
        reset alone or with others. One generator call per copy, then numpy across copies: resetting many copies
        costs little Python. Scale and shift the rows into whatever a reset draws (``u * 1.6 - 0.8``).
        """
        if not index.size:
            return np.empty((0, size))
        return np.stack([self.rngs[i].random(size) for i in index.tolist()])

    def reset(self, seed: int | None = None, copies: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Reset all copies or the listed ones; return the observations of all copies."""
        raise NotImplementedError

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Step every copy; return ``(obs, rewards (K, N) float32, terminated (K, N) bool, truncated (K, N) bool)``."""
        raise NotImplementedError

    def state(self) -> np.ndarray:
        """The global state of every copy, ``(K, *state_space.shape)``."""
        raise NotImplementedError(f"{type(self).__name__} defines no global state")

    def noop_action(self, agent: str) -> Any:
        """The action that does nothing for ``agent`` (one copy), or ``None``."""
        return None

    def render(self, copy: int = 0) -> np.ndarray:
        """Optional: an RGB picture of copy ``copy``, uint8 (height, width, 3).

        Overriding it is what makes a vectorised world render: the per-copy form then declares ``rgb_array``, and a
        server draws a vector-backed world with it (see the module docstring; examples/drift_vector.py).
        """
        raise NotImplementedError(f"{type(self).__name__} does not render")


class VectorParallelEnv(ParallelEnv):
    """A vectorised scenario with one copy as a PettingZoo ParallelEnv (its per-copy form).

    Args:
        vector: the vectorised scenario; must have ``num_copies == 1``.
        render_mode: ``"rgb_array"`` (if the scenario renders) or ``None``.
    """

    def __init__(self, vector: VectorScenario, render_mode: str | None = None):
        if vector.num_copies != 1:
            raise ValueError(f"VectorParallelEnv wraps one copy, got num_copies={vector.num_copies}")
        self.vector = vector
        self.possible_agents = list(vector.possible_agents)
        self.agents: list[str] = []
        renders = type(vector).render is not VectorScenario.render
        self.metadata = {
            "name": vector.name,
            "is_parallelizable": True,
            "render_modes": ["rgb_array"] if renders else [],
            "render_fps": vector.render_fps,
        }
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.observation_spaces = dict(vector.observation_spaces)
        self.action_spaces = dict(vector.action_spaces)
        if vector.state_space is not None:
            self.state_space = vector.state_space

    def observation_space(self, agent: str) -> Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs = self.vector.reset(seed=seed)
        self.agents = list(self.possible_agents)
        return {a: obs[a][0] for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]):
        live = self.agents
        if not live:
            raise RuntimeError("the episode is over; call reset() before stepping again")
        missing = [a for a in live if a not in actions]
        if missing:
            raise ValueError(f"no action for live agents {missing}; every agent in env.agents must act")
        # In vector form every agent is alive until its copy's episode ends, so `live` is every agent here.
        batch = {a: np.asarray(actions[a], dtype=self.action_spaces[a].dtype)[None] for a in live}
        obs, rewards, terminated, truncated = self.vector.step(batch)
        column = {a: j for j, a in enumerate(self.possible_agents)}
        out = (
            {a: obs[a][0] for a in live},
            {a: float(rewards[0, column[a]]) for a in live},
            {a: bool(terminated[0, column[a]]) for a in live},
            {a: bool(truncated[0, column[a]]) for a in live},
            {a: {} for a in live},
        )
        if terminated[0].any() or truncated[0].any():
            self.agents = []
        return out

    def state(self) -> np.ndarray:
        return self.vector.state()[0]

    def noop_action(self, agent: str) -> Any:
        """The scenario's no-op for ``agent``, or ``None`` where it declares none."""
        return self.vector.noop_action(agent)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.vector.render(0)


def vector_env(vector_cls: Callable[..., VectorScenario]) -> Callable[..., VectorParallelEnv]:
    """A PettingZoo-style constructor ``parallel_env(render_mode=None, **config)`` for the per-copy form."""

    def parallel_env(render_mode: str | None = None, **config) -> VectorParallelEnv:
        return VectorParallelEnv(vector_cls(1, **config), render_mode=render_mode)

    parallel_env.__doc__ = f"A {getattr(vector_cls, 'name', vector_cls.__name__)} world (one copy) as a ParallelEnv."
    return parallel_env
