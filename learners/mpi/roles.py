"""Roles of an MPMD job (``mpirun -n 4 agora train : -n 2 agora serve``): who is who, and what each announced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agora_marl.learners.mpi.core import _start, _State, _state


def join(role: str, payload: Any = None) -> None:
    """Start this process's MPI view as one of the job's ``role`` ranks, announcing ``payload`` to every process.

    A job may run processes of several kinds: ``mpirun -n 4 agora train : -n 2 agora serve``. Every process joins
    once, first, with its role (a learner joins as ``"learner"`` implicitly on its first call of anything here); the
    other functions of this module then work among the ranks of the same role, so servers never enter the learners'
    collectives, and :func:`published` gives any rank what the others announced. Collective over the whole job.

    Raises:
        RuntimeError: this process already started its MPI view under another role or without this payload.
    """
    if _State.ready:
        if _State.role != role or payload is not None:
            raise RuntimeError(f"join({role!r}) must come before any other use of learners.mpi in this process")
        return
    _start(role, payload)


def published(role: str) -> list[Any]:
    """What the processes of ``role`` announced with :func:`join`, in COMM_WORLD order (empty if none)."""
    return [payload for r, payload in _state().peers if r == role]


def release_servers() -> None:
    """Learners: tell the job's server ranks that training is over. Every learner calls it once, on success.

    The server ranks stop when every learner has (see :func:`learners_released`). Nothing to do in a job without
    server ranks. Never call it on an error path: a learner waiting here while another waits in a collective would
    hang the job instead of letting it abort.
    """
    state = _state()
    if state.released or state.role != "learner" or not published("server"):
        return
    state.released = True
    state.world.Ibarrier().Wait()


def learners_released() -> Callable[[], bool]:
    """Server ranks: a poll that turns true once every learner has called :func:`release_servers`."""
    state = _state()
    if state.world is None or state.world.Get_size() == 1:
        return lambda: True
    request = state.world.Ibarrier()
    return request.Test
