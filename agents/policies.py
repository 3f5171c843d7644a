"""Ready-made policies for ``agora play`` and custom clients. A policy is a callable ``obs -> action``.

:func:`named_policy` resolves a policy by name: ``random``, ``noop``, ``scripted`` (simple_spread, coin_duel_v0,
predator_prey_v0, homing_v0), ``module:callable`` (the callable gets the two spaces and returns a policy; the module is found as scenario modules
are, on ``sys.path``, then in the current directory, or given as a ``FILE.py``), or a directory holding a trained run.
Trained runs need torch, which a client never imports: the caller passes the loader (``agora play`` passes
``agora_marl.learners.trained.load_run_policy``; see agora_marl.launch.policies).
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.envserver.protocol import noop_value

Policy = Callable[[Any], Any]
#: ``loader(run_dir, observation_space, action_space, agent) -> Policy``: a trained run's policy for one seat.
RunLoader = Callable[[str, spaces.Space, spaces.Space, "str | None"], Policy]

#: Largest team for which the scripted spread policy solves the landmark assignment exactly (N! permutations).
_EXACT_ASSIGNMENT_MAX_AGENTS = 6


def random_policy(observation_space: spaces.Space, action_space: spaces.Space, seed: int | None = None) -> Policy:
    """Uniform samples of the action space (its own generator, seeded with ``seed``)."""
    space = _copy_space(action_space)
    space.seed(seed)
    return lambda obs: space.sample()


def noop_policy(observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """Always the neutral action: zeros clipped to the bounds, the first Discrete value."""
    value = noop_value(action_space)
    return lambda obs: value


def scripted_spread_policy(observation_space: spaces.Space, action_space: spaces.Space) -> Policy:
    """mpe2 simple_spread: each agent moves to the landmark the team's assignment gives it.

    The observation is ``self_vel(2), self_pos(2), landmark_rel(2N), other_rel(2(N-1)), comm(2(N-1))`` (6N
    numbers). From it an agent reconstructs every agent's and landmark's absolute position, solves the same
    minimum-distance assignment of agents to landmarks as its teammates do (so they never chase one landmark), and
    steers to its own with a damped controller. Discrete actions pick the strongest axis; continuous ones push on both.
    """
    if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1):
        raise ValueError(
            f"the scripted spread policy needs simple_spread's flat Box observation, got {observation_space}"
        )
    size = observation_space.shape[0]
    if size % 6 or size < 6:
        raise ValueError(f"a simple_spread observation has 6N numbers (N agents); got {size}: is this simple_spread?")
    n = size // 6
    if isinstance(action_space, spaces.Discrete) and action_space.n == 5:
        discrete = True
    elif isinstance(action_space, spaces.Box) and action_space.shape == (5,):
        discrete = False
    else:
        raise ValueError(f"the scripted spread policy needs Discrete(5) or Box(5,) actions, got {action_space}")

    def policy(obs: np.ndarray) -> Any:
        obs = np.asarray(obs, dtype=np.float64)
        velocity, position = obs[0:2], obs[2:4]
        landmarks = position + obs[4 : 4 + 2 * n].reshape(n, 2)
        others = position + obs[4 + 2 * n : 4 + 4 * n - 2].reshape(n - 1, 2)
        target = landmarks[_assignment(np.vstack([position, others]), landmarks)[0]]
        # Proportional to the distance, damped by the velocity: MPE's damping alone overshoots at full push.
        push = 4.0 * (target - position) - 1.0 * velocity
        if discrete:
            if np.max(np.abs(push)) < 0.05:
                return 0
            axis = int(np.argmax(np.abs(push)))
            return 1 + 2 * axis + int(push[axis] > 0)
        action = np.zeros(5, dtype=action_space.dtype)
        action[1], action[2] = max(0.0, -push[0]), max(0.0, push[0])
        action[3], action[4] = max(0.0, -push[1]), max(0.0, push[1])
        return np.clip(action, action_space.low, action_space.high)

    return policy


def _assignment(agents: np.ndarray, landmarks: np.ndarray) -> list[int]:
    """Landmark index per agent minimising the total distance; every agent computes the same one.

    Rows are sorted by absolute position first, so the answer does not depend on which agent computes it.
    """
    order = np.lexsort((agents[:, 1], agents[:, 0]))
    distances = np.linalg.norm(agents[order][:, None, :] - landmarks[None, :, :], axis=-1)
    n = len(agents)
    if n <= _EXACT_ASSIGNMENT_MAX_AGENTS:
        best = min(itertools.permutations(range(n)), key=lambda p: distances[np.arange(n), list(p)].sum())
        chosen = list(best)
    else:  # greedy on the closest remaining pair: good enough for large teams, and still the same for everyone
        chosen, free_rows, free_cols = [0] * n, set(range(n)), set(range(n))
        for row, col in sorted(np.ndindex(n, n), key=lambda rc: distances[rc]):
            if row in free_rows and col in free_cols:
                chosen[row] = col
                free_rows.discard(row)
                free_cols.discard(col)
    by_agent = [0] * n
    for rank, agent in enumerate(order):
        by_agent[agent] = chosen[rank]
    return by_agent


def scripted_policy(observation_space: spaces.Space, action_space: spaces.Space, agent: str | None = None) -> Policy:
    """The scripted player of the world these spaces come from: agora's ``coin_duel_v0`` (its view and five moves;
    the world owns its player, ``scenarios.builtin.coin_duel.scripted_moves``), ``homing_v0`` (straight at the
    agent's beacon), ``predator_prey_v0`` (by the seat's
    name: predators chase, the prey flees; ``scenarios.builtin.predator_prey``), else mpe2's simple_spread."""
    # Imported here, as for module:callable below: a client playing another policy never builds the registry.
    from agora_marl.scenarios.builtin import coin_duel, homing, predator_prey

    if coin_duel.plays(observation_space, action_space):
        return lambda obs: int(coin_duel.scripted_moves(obs)[0])
    if homing.plays(observation_space, action_space):
        return lambda obs: int(homing.scripted_moves(obs)[0])
    role = predator_prey.scripted_role(agent, observation_space, action_space)
    if role == "predator":
        return lambda obs: int(predator_prey.scripted_predator_moves(np.asarray(obs)[None])[0])
    if role == "prey":
        return lambda obs: predator_prey.scripted_prey_moves(np.asarray(obs)[None])[0]
    return scripted_spread_policy(observation_space, action_space)


_BUILTIN: dict[str, Callable[[spaces.Space, spaces.Space], Policy]] = {
    "random": random_policy,
    "noop": noop_policy,
    "scripted": scripted_policy,
    "scripted_spread": scripted_spread_policy,
}


#: The scenarios ``scripted`` plays, by a part of their names.
_SCRIPTED_SCENARIOS = ("simple_spread", "coin_duel", "predator_prey", "homing")


def has_scripted_policy(scenario: str) -> bool:
    """Whether the ``scripted`` policy plays ``scenario`` (a baseline for ``agora eval --baselines``)."""
    return any(part in scenario for part in _SCRIPTED_SCENARIOS)


def named_policy(
    name: str,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    agent: str | None = None,
    run_loader: RunLoader | None = None,
) -> Policy:
    """The policy called ``name`` for one seat with these spaces.

    Args:
        name: ``random``, ``noop``, ``scripted`` (simple_spread, coin_duel_v0, predator_prey_v0, homing_v0), ``module:callable`` (called with
            the observation and action spaces, it returns the policy; ``module`` is a module name looked up on
            ``sys.path`` and then in the current directory, or a ``FILE.py``:
            :func:`agora_marl.scenarios.registry.import_module_or_file`), or the path of a training run directory.
        agent: the seat's agent name: a trained run plays that agent's network (the others ignore it).
        run_loader: loads a trained run's policy; without one, a run directory is refused.

    Raises:
        ValueError: the name means nothing loadable (with what is accepted).
    """
    if name == "scripted":  # the one built-in that plays by the seat (predator or prey)
        return scripted_policy(observation_space, action_space, agent)
    if name in _BUILTIN:
        return _BUILTIN[name](observation_space, action_space)
    if os.path.isdir(name):
        if run_loader is None:
            raise ValueError(
                f"{name} is a directory: playing a trained run needs torch and a run loader "
                "(agora play has one; in code pass run_loader=agora_marl.learners.trained.load_run_policy)"
            )
        return run_loader(name, observation_space, action_space, agent)
    if ":" in name:
        # The lookup of --module's scenario files. Imported here, not at the top: the scenarios package builds the
        # built-in worlds' registry on import, which a client playing a built-in policy never needs.
        from agora_marl.scenarios.registry import import_module_or_file

        module_name, _, attr = name.rpartition(":")
        try:
            factory = getattr(import_module_or_file(module_name), attr)
        except (ImportError, FileNotFoundError, AttributeError) as exc:
            raise ValueError(
                f"cannot load policy {name!r}: {exc} (MODULE is a module on sys.path or in the current directory, "
                "or a FILE.py, as for --module)"
            ) from None
        policy = factory(observation_space, action_space)
        if not callable(policy):
            raise ValueError(f"{name} returned {type(policy).__name__}, not a callable obs -> action")
        return policy
    raise ValueError(
        f"unknown policy {name!r}: use one of {sorted(_BUILTIN)}, module:callable, or a training run directory"
    )


def _copy_space(space: spaces.Space) -> spaces.Space:
    # Seeding a space seeds the object: a copy keeps the world spec's spaces (shared by every seat) untouched.
    return copy.deepcopy(space)
