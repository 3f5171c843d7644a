"""The process's MPI view: ranks, nodes, roles, object collectives, and statistics of floats and numpy arrays.

The only module of agora that imports mpi4py (lazily, on first use), and it imports no torch: ``agora serve`` runs
as an MPI rank through it. The torch parts of ``learners.mpi`` (``tensors``, ``gradients``, ``cuda``) reach MPI
through :func:`communicator` and :func:`mpi_module`. See the package docstring for what data parallelism means here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np


class Launcher(NamedTuple):
    """The environment variables by which one kind of MPI launcher describes the ranks it starts."""

    name: str
    """The implementation or launcher, as ``agora doctor`` names it."""
    size_var: str
    """The variable holding the number of ranks ("" where it sets none)."""
    rank_var: str
    """The variable holding this process's rank ("" where none marks a rank only: srun's are set in batch scripts)."""


#: The launchers agora recognises, in the order their variables are read. A size variable saying more than one rank
#: while mpi4py cannot load is an error (going on as size 1 would run R unsynchronised copies of the job); a rank
#: variable marks a process started as a rank (see :func:`launched_by_mpi`).
LAUNCHERS: tuple[Launcher, ...] = (
    Launcher("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    Launcher("PMI (MPICH / Intel MPI / srun --mpi=pmi2)", "PMI_SIZE", "PMI_RANK"),
    Launcher("PMIx (Open MPI 5 / srun --mpi=pmix)", "", "PMIX_RANK"),
    Launcher("MVAPICH", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"),
    Launcher("srun", "SLURM_STEP_NUM_TASKS", ""),
)
#: Rank r seeds with ``seed + r * _SEED_STRIDE``: room for a million worlds per rank seeded ``seed + k``.
_SEED_STRIDE = 1_000_003


class _State:
    """The process's MPI view, filled on first use."""

    ready = False
    MPI: Any = None  # the mpi4py.MPI module, or None when running alone without MPI
    comm: Any = None  # this role's ranks (all of COMM_WORLD unless the job mixes roles)
    node: Any = None  # this role's ranks on this node
    world: Any = None  # every process of the job, whatever its role
    role = "learner"
    peers: list[tuple[str, Any]] = []  # (role, payload) of every process of the job, by COMM_WORLD rank
    released = False
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    node_cores: list[list[int]] = []  # the CPU affinity of each rank of this node, by local rank


def _state() -> type[_State]:
    if not _State.ready:
        _start("learner", None)
    return _State


def _start(role: str, payload: Any) -> None:
    _State.ready = True
    _State.role, _State.peers = role, [(role, payload)]
    _State.node_cores = [sorted(_affinity())]
    if _switched_off():
        _refuse_alone_if_launched("AGORA_MPI=off")
        return
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        _refuse_alone_if_launched(f"mpi4py could not load ({reason})")
        print(f"agora: MPI unavailable ({type(exc).__name__}: {reason}); running as a single process", file=sys.stderr)
        return
    world = MPI.COMM_WORLD
    if world.Get_size() > 1:
        _State.peers = world.allgather((role, payload))
    roles = sorted({r for r, _ in _State.peers})
    # An MPMD job (`mpirun -n 4 agora train : -n 2 agora serve`): each role's collectives run among its own ranks.
    comm = world if len(roles) == 1 else world.Split(roles.index(role), key=world.Get_rank())
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    _State.MPI, _State.comm, _State.node, _State.world = MPI, comm, node, world
    _State.rank, _State.size = comm.Get_rank(), comm.Get_size()
    _State.local_rank, _State.local_size = node.Get_rank(), node.Get_size()
    if node.Get_size() > 1:
        _State.node_cores = node.allgather(_State.node_cores[0])


def _switched_off() -> bool:
    return os.environ.get("AGORA_MPI", "").lower() in ("0", "off", "no")


def _refuse_alone_if_launched(why: str) -> None:
    for var in (launcher.size_var for launcher in LAUNCHERS if launcher.size_var):
        if os.environ.get(var, "1").isdigit() and int(os.environ.get(var, "1")) > 1:
            raise RuntimeError(
                f"{var}={os.environ[var]} says this process is one of several MPI ranks, but {why}. "
                "Install mpi4py built against the launcher's MPI (`python -m mpi4py --mpi-library` shows which "
                "library it loads), or run without mpirun."
            )


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process as a rank (and not as a child of one: ``AGORA_MPI=off``).

    Reads the environment only; starts nothing.
    """
    if _switched_off():
        return False
    return any(launcher.rank_var in os.environ for launcher in LAUNCHERS if launcher.rank_var)


def mpi_module() -> Any:
    """The ``mpi4py.MPI`` module this process uses, or None when it runs alone without MPI."""
    return _state().MPI


def communicator() -> Any:
    """The mpi4py communicator of this role's ranks, or None when the process runs alone without MPI."""
    return _state().comm


def rank() -> int:
    """This process's rank among its role's ranks (0 without MPI)."""
    return _state().rank


def size() -> int:
    """The number of ranks of this process's role (1 without MPI)."""
    return _state().size


def local_rank() -> int:
    """This process's rank among the ranks on its node (shared-memory domain)."""
    return _state().local_rank


def local_size() -> int:
    """The number of ranks on this node."""
    return _state().local_size


def is_root() -> bool:
    """True on rank 0: the rank that logs, writes the run directory and checkpoints."""
    return _state().rank == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    state = _state()
    if state.size > 1:
        state.comm.Barrier()


def seed_for_rank(seed: int) -> int:
    """The seed rank r uses: ``seed + r * 1_000_003``, so the K worlds each rank seeds ``s + k`` never coincide."""
    return int(seed) + rank() * _SEED_STRIDE


def log(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only (flushed); other ranks stay quiet."""
    if is_root():
        print(*args, **kwargs, flush=True)


@contextlib.contextmanager
def abort_on_exception() -> Iterator[None]:
    """Turn an uncaught exception in one rank into the end of the whole job (``MPI_Abort`` at exit).

    Without it, the other ranks would wait forever in their next collective. ``python -m mpi4py`` does the same for
    a whole script; use this around an entry point that is not started that way (``mpirun -n 2 agora train``).
    """
    try:
        yield
    except BaseException as exc:
        if _state().size > 1:
            from mpi4py.run import set_abort_status

            set_abort_status(exc)
        raise


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Rank ``root``'s ``obj`` on every rank (pickled: for small things between our own ranks, never the wire)."""
    state = _state()
    return obj if state.size == 1 else state.comm.bcast(obj, root=root)


def allgather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled: small things between our own ranks)."""
    state = _state()
    return [obj] if state.size == 1 else state.comm.allgather(obj)


def gather_object(obj: Any, root: int = 0) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank ``root`` (None elsewhere); pickled, between our own ranks."""
    state = _state()
    return [obj] if state.size == 1 else state.comm.gather(obj, root=root)


def node_broadcast_object(obj: Any) -> Any:
    """The ``obj`` of this node's local rank 0, on every rank of the node."""
    state = _state()
    return obj if state.local_size == 1 else state.node.bcast(obj, root=0)


def node_cores() -> list[list[int]]:
    """The CPU affinity of each rank of this node, by local rank (exchanged when MPI started)."""
    return [list(cores) for cores in _state().node_cores]


def node_barrier() -> None:
    """Wait until every rank of this node gets here."""
    state = _state()
    if state.local_size > 1:
        state.node.Barrier()


def fair_threads(own_processes: float = 0.0) -> int:
    """A fair share of the cores this rank may run on, for its torch threads (at least 1).

    The cores in this rank's CPU affinity, divided among the ranks of the node whose affinity overlaps it (all of
    them when the launcher binds nothing; none but itself when it binds each rank to its own cores) and the busy
    processes each of them adds (``own_processes``: its env servers, or its part of the node's). The ranks' affinities
    were exchanged when MPI started, so this is not collective.
    """
    state = _state()
    mine = set(state.node_cores[state.local_rank])
    sharing = sum(1 for cores in state.node_cores if mine.intersection(cores)) * (1 + own_processes)
    return max(1, int(len(mine) // sharing))


def _affinity() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------- roles (MPMD)


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


# ---------------------------------------------------------------------------------------------- statistics


def allreduce_sum(x: float | np.ndarray) -> float | np.ndarray:
    """The elementwise sum of ``x`` over all ranks, in the kind given (a float or a numpy array); one call.

    Tensors go through :mod:`learners.mpi.tensors`, which reduces them where they live.
    """
    return _reduce(x, "SUM")


def allreduce_max(x: float | np.ndarray) -> float | np.ndarray:
    """The elementwise maximum of ``x`` over all ranks; one call."""
    return _reduce(x, "MAX")


def allreduce_min(x: float | np.ndarray) -> float | np.ndarray:
    """The elementwise minimum of ``x`` over all ranks; one call."""
    return _reduce(x, "MIN")


def allreduce_mean(x: float | np.ndarray) -> float | np.ndarray:
    """The elementwise mean of ``x`` over all ranks; one call. Reduce a vector of statistics together."""
    return _reduce(x, "SUM") / size()


def mean_std(x: Any, unbiased: bool = True) -> tuple[float, float]:
    """The mean and standard deviation of all ranks' elements of ``x`` together (as for advantage normalisation).

    ``x``: anything numpy reads, or a tensor (anything with ``detach()``: it is copied to host memory once). Each
    rank sends its count, mean and sum of squared deviations (one ``Allgather`` of three float64) and every rank
    combines them the same way (Chan et al.), which stays exact where sum-of-squares formulas cancel.
    ``unbiased`` divides by ``n - 1`` like ``torch.std``.
    """
    if hasattr(x, "detach"):
        x = x.detach().double().cpu().numpy()
    local = np.asarray(x, np.float64).reshape(-1)
    n = float(local.size)
    mean = float(local.mean()) if n else 0.0
    m2 = float(((local - mean) ** 2).sum()) if n else 0.0
    state = _state()
    rows = np.array([[n, mean, m2]])
    if state.size > 1:
        rows = np.empty((state.size, 3))
        state.comm.Allgather(np.array([n, mean, m2]), rows)
    count, mean, m2 = 0.0, 0.0, 0.0
    for n_r, mean_r, m2_r in rows:
        if n_r == 0:
            continue
        delta = mean_r - mean
        total = count + n_r
        mean += delta * n_r / total
        m2 += m2_r + delta * delta * count * n_r / total
        count = total
    if count == 0:
        raise ValueError("mean_std of no elements on any rank")
    dof = count - 1 if unbiased else count
    return mean, float(np.sqrt(m2 / dof)) if dof > 0 else 0.0


def _reduce(x: Any, op: str) -> Any:
    if hasattr(x, "detach"):
        raise TypeError("learners.mpi reduces floats and numpy arrays; reduce a tensor with learners.mpi.tensors")
    scalar = np.ndim(x) == 0 and not isinstance(x, np.ndarray)
    arr = np.array(x, dtype=np.float64 if scalar else None, copy=True, order="C")
    if arr.dtype == np.float16:
        raise TypeError("MPI has no portable type for float16: reduce in float32 and convert back")
    state = _state()
    if state.size > 1:
        state.comm.Allreduce(state.MPI.IN_PLACE, arr, op=getattr(state.MPI, op))
    return float(arr) if scalar else arr
