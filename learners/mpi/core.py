"""The process's MPI view: ranks, nodes, object collectives, statistics and the raw buffer reductions.

The only module of agora that imports mpi4py (lazily, in :func:`_start`); the rest of ``learners.mpi`` reaches MPI
through :func:`_state`. See the package docstring for what data parallelism here means.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

#: Environment variables by which MPI launchers announce a job of several ranks. If one says more than one rank
#: but mpi4py cannot load, going on as size 1 would run R unsynchronised copies of the job: that is an error.
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
#: Rank r seeds with ``seed + r * _SEED_STRIDE``: room for a million worlds per rank seeded ``seed + k``.
_SEED_STRIDE = 1_000_003


class ParameterDriftError(RuntimeError):
    """The ranks' parameters no longer agree."""


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
    cuda_aware: bool | None = None


def _state() -> type[_State]:
    if not _State.ready:
        _start("learner", None)
    return _State


def _start(role: str, payload: Any) -> None:
    _State.ready = True
    _State.role, _State.peers = role, [(role, payload)]
    _State.node_cores = [sorted(_affinity())]
    if os.environ.get("AGORA_MPI", "").lower() in ("0", "off", "no"):
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


def _refuse_alone_if_launched(why: str) -> None:
    for var in _LAUNCHER_SIZE_VARS:
        if os.environ.get(var, "1").isdigit() and int(os.environ.get(var, "1")) > 1:
            raise RuntimeError(
                f"{var}={os.environ[var]} says this process is one of several MPI ranks, but {why}. "
                "Install mpi4py built against the launcher's MPI (`python -m mpi4py --mpi-library` shows which "
                "library it loads), or run without mpirun."
            )


def mpi_module() -> Any:
    """The ``mpi4py.MPI`` module this process uses, or None when it runs alone without MPI (for ``agora doctor``)."""
    return _state().MPI


def rank() -> int:
    """This process's rank in the job (0 without MPI)."""
    return _state().rank


def size() -> int:
    """The number of ranks in the job (1 without MPI)."""
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


# ---------------------------------------------------------------------------------------------- statistics


def allreduce_sum(x: Any) -> Any:
    """The elementwise sum of ``x`` over all ranks, in the kind given (float, numpy array or tensor); one call."""
    return _reduce(x, "SUM")


def allreduce_max(x: Any) -> Any:
    """The elementwise maximum of ``x`` over all ranks; one call."""
    return _reduce(x, "MAX")


def allreduce_min(x: Any) -> Any:
    """The elementwise minimum of ``x`` over all ranks; one call."""
    return _reduce(x, "MIN")


def allreduce_mean(x: Any) -> Any:
    """The elementwise mean of ``x`` over all ranks; one call. Reduce a vector of statistics together."""
    return _reduce(x, "SUM") / size()


def mean_std(x: np.ndarray | torch.Tensor, unbiased: bool = True) -> tuple[float, float]:
    """The mean and standard deviation of all ranks' elements of ``x`` together (as for advantage normalisation).

    Each rank sends its count, mean and sum of squared deviations (one ``Allgather`` of three float64) and every rank
    combines them the same way (Chan et al.), which stays exact where sum-of-squares formulas cancel.
    ``unbiased`` divides by ``n - 1`` like ``torch.std``.
    """
    if isinstance(x, torch.Tensor):
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


def check_in_sync(module: torch.nn.Module | Iterable[torch.Tensor], rtol: float = 1e-9) -> None:
    """Raise :class:`ParameterDriftError` on every rank if the ranks' parameters differ.

    Compares a float64 checksum (sum, sum of squares and sum of absolute values of all parameters) across ranks with
    one ``Allgather``; identical parameters give identical checksums. Cheap: call it every N updates.
    """
    state = _state()
    if state.size == 1:
        return
    tensors = list(module.parameters()) if isinstance(module, torch.nn.Module) else list(module)
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).double()
        sums = torch.stack([flat.sum(), flat.dot(flat), flat.abs().sum()]).cpu()
    rows = np.empty((state.size, 3))
    state.comm.Allgather(sums.numpy(), rows)
    scale = np.maximum(np.abs(rows[0, [2, 1]]), 1e-30)
    drift = np.abs(rows[:, :2] - rows[0, :2]) > rtol * scale
    if drift.any():
        bad = sorted({int(r) for r in np.nonzero(drift.any(axis=1))[0]})
        table = "; ".join(f"rank {r}: sum={rows[r, 0]:.12g} sumsq={rows[r, 1]:.12g}" for r in range(state.size))
        raise ParameterDriftError(
            f"parameters of rank(s) {bad} differ from rank 0's ({table}). Every rank must start from "
            "broadcast_parameters() and apply the same averaged update: look for a rank that skipped an "
            "allreduce or an optimizer step, or updated parameters outside the optimizer"
        )


# ---------------------------------------------------------------------------------------------- buffers


def _check_reducible(t: torch.Tensor | np.ndarray) -> None:
    if t.dtype in (torch.bfloat16, torch.float16, np.float16):
        raise TypeError(f"MPI has no portable type for {t.dtype}: reduce in float32 (x.float()) and convert back")


def _collective(buf: torch.Tensor | np.ndarray, call: Any) -> None:
    """Run ``call`` on ``buf``: numpy and CPU tensors directly, CUDA tensors directly or through host memory."""
    if isinstance(buf, np.ndarray) or buf.device.type == "cpu":
        call(buf if isinstance(buf, np.ndarray) else buf.numpy())
        return
    from agora_marl.learners.mpi.cuda import cuda_aware  # here, not at the top: cuda builds on this module

    torch.cuda.current_stream(buf.device).synchronize()
    if cuda_aware():
        call(buf)
        return
    # Small and rare (statistics, the first broadcast): pageable memory; the gradients have their own pinned buffer.
    host = buf.cpu()
    call(host.numpy())
    buf.copy_(host)


def _reduce(x: Any, op: str) -> Any:
    state = _state()
    if isinstance(x, torch.Tensor):
        _check_reducible(x)
        out = x.detach().clone().contiguous()
        if state.size > 1:
            _collective(out, lambda buf: state.comm.Allreduce(state.MPI.IN_PLACE, buf, op=getattr(state.MPI, op)))
        return out
    scalar = np.ndim(x) == 0 and not isinstance(x, np.ndarray)
    arr = np.array(x, dtype=np.float64 if scalar else None, copy=True, order="C")
    _check_reducible(arr)
    if state.size > 1:
        state.comm.Allreduce(state.MPI.IN_PLACE, arr, op=getattr(state.MPI, op))
    return float(arr) if scalar else arr
