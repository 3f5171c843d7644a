"""A trained run: its config and checkpoint, the policy rebuilt from it without a server, and greedy evaluation.

Everything here starts from the run directory alone: the checkpoint names its algorithm (the reference that
learners.registry resolves, whoever wrote it) and holds its settings, the world's spec and the trained seats, so
the algorithm's own ``make_policy`` rebuilds the policy and loads its parameters. This is what ``agora eval``,
``agora play --policy RUN_DIR``, ``agora record``, an opponent process and ``eval --opponent RUN_DIR`` use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.envserver.protocol import WorldSpec
from agora_marl.learners.api import Policy
from agora_marl.learners.checkpoints import check
from agora_marl.learners.config import Config, ConfigError, load_config, settings_from_table
from agora_marl.learners.registry import AlgorithmError, resolve
from agora_marl.learners.run import CONFIG_FILE, Run, load_checkpoint


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Config, dict[str, Any]]:
    """A run's config and the state of ``checkpoint`` (default: its latest), checked against the schema
    (learners.checkpoints)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    try:
        config = load_config(run_dir / CONFIG_FILE)
    except ConfigError as exc:
        raise ConfigError(
            f"{run_dir / CONFIG_FILE}: {exc} (if the algorithm's file moved, set algo in that file to its new place)"
        ) from None
    if checkpoint is None:
        found = Run(run_dir, config, writer=False).checkpoints()
        if not found:
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/update_*.pt)")
        checkpoint = found[-1]
    return config, dict(check(load_checkpoint(checkpoint), str(checkpoint)))


def policy_from_checkpoint(state: Mapping[str, Any], where: str = "checkpoint", algo: str | None = None) -> Policy:
    """The acting policy of a checkpoint's ``state``: its algorithm's ``make_policy`` with the checkpoint's settings,
    spec and seats, its parameters loaded (no server needed).

    Args:
        where: what to call the checkpoint in messages.
        algo: the algorithm to load (the run's config.toml's ``algo``, which its owner may have edited after moving
            the file); default the reference the checkpoint recorded. Its name must be the checkpoint's.

    Raises:
        CheckpointError: ``state`` does not follow the schema.
        ConfigError: its algorithm cannot be loaded any more (a moved file), or its settings no longer fit it.
    """
    check(state, where)
    recorded = state["algorithm"]
    try:
        cls, _ = resolve(algo or recorded["reference"])
    except AlgorithmError as exc:
        raise ConfigError(f"{where} was trained by {recorded['name']!r}, which cannot be loaded now: {exc}") from None
    if cls.name != recorded["name"]:
        raise ConfigError(f"{where} was trained by {recorded['name']!r}, not by {algo!r} ({cls.name})")
    settings = settings_from_table(cls, dict(recorded["settings"]))
    policy = cls().make_policy(WorldSpec.from_wire(state["spec"]), list(state["seats"]), settings)
    try:
        policy.load_state_dict(state["policy"])
    except RuntimeError as exc:
        raise ConfigError(
            f"{where}: {recorded['name']}.make_policy(spec, seats, settings) builds a policy that does not fit the "
            f"parameters it trained ({exc}); make_policy must build the same networks from the same arguments"
        ) from None
    return policy


def load_trained_policy(run_dir: str | Path, checkpoint: str | Path | None = None) -> Policy:
    """The trained multi-agent policy of a run (:func:`policy_from_checkpoint`), on the CPU, in eval mode."""
    config, state = load_run(run_dir, checkpoint)
    policy = policy_from_checkpoint(state, str(checkpoint or run_dir), config.algo)
    policy.eval()
    return policy


def load_run_policy(
    run_dir: str | Path,
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
    agent: str | None = None,
    greedy: bool = True,
    checkpoint: str | Path | None = None,
) -> Callable[[Any], Any]:
    """One seat's policy ``obs -> action`` from a trained run (for ``agora play --policy RUN_DIR``).

    Args:
        run_dir: the run directory.
        observation_space, action_space: the seat's spaces; checked against the trained agent's.
        agent: the seat's agent name. Without it, the first trained agent with these spaces plays (with an agent-id
            input, that is the team's first member's behaviour).
        greedy: act on the mode of the distribution (True) or sample it.
        checkpoint: a checkpoint file (default: the run's latest).
    """
    policy = load_trained_policy(run_dir, checkpoint)
    if agent is None:
        candidates = [
            a
            for a in policy.possible_agents
            if (observation_space is None or policy.observation_spaces[a] == observation_space)
            and (action_space is None or policy.action_spaces[a] == action_space)
        ]
        if not candidates:
            raise ValueError(
                f"no agent trained in {run_dir} has observation space {observation_space} and action space {action_space}"
            )
        agent = candidates[0]
    if agent not in policy.possible_agents:
        raise ValueError(f"{run_dir} trained agents {policy.possible_agents}, not {agent!r}")
    for given, trained, what in (
        (observation_space, policy.observation_spaces[agent], "observation"),
        (action_space, policy.action_spaces[agent], "action"),
    ):
        if given is not None and given != trained:
            raise ValueError(f"the seat's {what} space {given} differs from the trained agent {agent!r}'s {trained}")
    return lambda obs: policy.act({agent: np.asarray(obs)[None]}, greedy)[agent][0]


def evaluate(
    policy: Any,
    addresses: list[str],
    scenario: str,
    config: dict,
    episodes: int,
    seed: int = 1_000_000,
    max_worlds: int = 128,
    greedy: bool = True,
    timeout_s: float = 600.0,
) -> np.ndarray:
    """Team returns (sum over all agents) of ``episodes`` episodes played by ``policy`` through the servers.

    Worlds run in parallel; each contributes its first episodes in turn, so that short episodes are not favoured.
    """
    num_worlds = min(episodes, max_worlds)
    quota = math.ceil(episodes / num_worlds)
    returns: list[list[float]] = [[] for _ in range(num_worlds)]
    deadline = time.monotonic() + timeout_s
    with BatchedWorlds(addresses, scenario, config, num_worlds=num_worlds, seed=seed, layout="agents") as worlds:
        result = worlds.reset(seed=seed)
        running = np.zeros(num_worlds)
        while min(len(r) for r in returns) < quota:
            if time.monotonic() > deadline:
                raise TimeoutError(f"evaluation did not finish {episodes} episodes in {timeout_s} s")
            result = worlds.step(policy.act(result.obs, greedy))
            running += result.rewards.sum(axis=1)
            for k in np.flatnonzero(result.episode_over):
                if len(returns[k]) < quota:
                    returns[k].append(float(running[k]))
                running[k] = 0.0
    ordered = [r[i] for i in range(quota) for r in returns]
    return np.asarray(ordered[:episodes])
