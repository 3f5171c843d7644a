"""The checkpoint schema: what every checkpoint holds, whoever the algorithm, checked when it is loaded.

A checkpoint is a dict of plain data and tensors (``torch.save``; loaded with ``weights_only=True``, so it can never
run code)::

    format      2
    step        environment steps done (summed over ranks)
    update      updates done
    algorithm   {"name": ..., "reference": ..., "settings": {...}}: which algorithm, how to load it, its settings
    spec        the world's spec (WorldSpec.to_wire(): scenario, config, every agent's spaces, the state's)
    seats       the agents the learner trained (its policy acts for these)
    policy      the acting policy's state_dict (what ``make_policy`` + ``load_state_dict`` rebuild)
    state       {name: state_dict} of the other objects the algorithm registered (critics, optimizers...)
    per_rank    [{name: state_dict} per rank] of what it registered per rank (replay memories), or None
    harness     the harness's own state (episode counts, the recent returns)
    rng         {"seed": ..., "reseeded_at": update}: torch and numpy streams derive from (seed, rank, update)
    selfplay    the snapshot pool (self-play runs only)

:func:`check` refuses anything else with a message that says what is wrong, so that an algorithm cannot write a
checkpoint that eval, play or resume cannot read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORMAT = 2
KEYS = ("format", "step", "update", "algorithm", "spec", "seats", "policy", "state", "per_rank", "harness", "rng")


class CheckpointError(ValueError):
    """A checkpoint does not follow the schema, or belongs to another algorithm or world than expected."""


def check(state: Mapping[str, Any], where: str = "checkpoint") -> Mapping[str, Any]:
    """``state`` if it follows the schema (see the module docstring), else :class:`CheckpointError`.

    Args:
        where: what to call it in messages (its file).
    """
    if "format" not in state:
        raise CheckpointError(
            f"{where} was written by an older agora (no 'format' key): evaluate it with the version that trained it, "
            "or train the run again"
        )
    if state["format"] != FORMAT:
        raise CheckpointError(f"{where} has checkpoint format {state['format']}; this agora reads format {FORMAT}")
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: it was not written by agora's harness")
    algorithm = state["algorithm"]
    if not isinstance(algorithm, Mapping) or not {"name", "reference", "settings"} <= set(algorithm):
        raise CheckpointError(f"{where}: 'algorithm' must hold name, reference and settings, not {algorithm!r}")
    if not isinstance(state["seats"], list) or not state["seats"]:
        raise CheckpointError(f"{where}: 'seats' must list the trained agents, not {state['seats']!r}")
    return state


def check_resumable(state: Mapping[str, Any], name: str, spec_wire: Mapping[str, Any], seats: list[str]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` continues a run of algorithm ``name`` in worlds of
    ``spec_wire`` with ``seats`` (what --resume opened)."""
    if state["algorithm"]["name"] != name:
        raise CheckpointError(
            f"the checkpoint was written by algorithm {state['algorithm']['name']!r} "
            f"({state['algorithm']['reference']}), the config names {name!r}: resume with its algo"
        )
    theirs, ours = state["spec"], spec_wire
    for key in ("possible_agents", "observation_spaces", "action_spaces"):
        if theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"the checkpoint's world ({theirs.get('scenario')}) differs from the worlds opened now "
                f"({ours.get('scenario')}) in its {key}: resume with the run's env settings"
            )
    if list(state["seats"]) != list(seats):
        raise CheckpointError(f"the checkpoint trained seats {state['seats']}, the worlds give the learner {seats}")
