"""A seat's policy by name for the commands that play one (``agora play``, ``agora record``), trained runs included.

``agora_marl.agents.policies`` resolves every name but a run directory, since a client never imports torch; this is
where the launcher hands it the learners' loader.
"""

from __future__ import annotations

from pathlib import Path

from gymnasium import spaces

from agora_marl.agents.policies import Policy, named_policy


def load_run_policy(
    run_dir: str, observation_space: spaces.Space, action_space: spaces.Space, agent: str | None
) -> Policy:
    """A trained run's greedy policy for one seat (imports torch only when a run is asked for)."""
    from agora_marl.learners.trained import load_run_policy as load

    return load(run_dir, observation_space, action_space, agent=agent)


def seat_policy(name: str, observation_space: spaces.Space, action_space: spaces.Space, agent: str | None) -> Policy:
    """The policy called ``name`` (``random``, ``scripted``, ``module:callable``, a run directory) for one seat."""
    return named_policy(name, observation_space, action_space, agent, run_loader=load_run_policy)


def load_run_first(name: str) -> None:
    """Load a trained run named as a policy before any seat is taken (a no-op for other names).

    Loading imports torch and the run's algorithm: seconds, and on a busy machine longer than the server's heartbeat
    timeout, through which seats already joined would go silent and be released. Loaded first, a run that cannot be
    played is also reported before anything is joined.

    Raises:
        FileNotFoundError, ValueError: ``name`` is a directory but no playable run (the message says why).
    """
    if Path(name).is_dir():
        from agora_marl.learners.trained import load_trained_policy

        load_trained_policy(name)
