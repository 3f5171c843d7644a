"""Data parallelism over MPI, in plain functions that do nothing when there is one process.

This is the only module of agora that imports mpi4py, and it imports it lazily: a learner started without an MPI
launcher runs as rank 0 of 1, and one on a machine with no MPI library at all does too (after a one-line notice).
Under ``mpirun -n R`` every rank runs the same learner on its own worlds and:

- starts from rank 0's parameters (:func:`broadcast_parameters`);
- averages gradients after each backward pass with one in-place ``Allreduce`` of one flat buffer that the
  parameters' ``.grad`` tensors are views into (:class:`GradientAllreducer`), so nothing is copied;
- reduces statistics the same way, one call per vector (:func:`allreduce_mean`, :func:`mean_std`);
- checks every so often that the parameters still agree (:func:`check_in_sync`).

A job may also mix kinds of processes (MPMD: ``mpirun -n 4 agora train : -n 2 agora serve``): each joins with its
role (:func:`join`), the collectives here run among one role's ranks, and what each process announced (a server's
addresses) reaches every other (:func:`published`); the learners release the servers when done
(:func:`release_servers`).

CUDA tensors go to MPI directly when the library is CUDA-aware and through one pinned host buffer otherwise; see
:func:`cuda_aware`. An exception in one rank must end the job rather than leave the others waiting in a collective:
run under ``python -m mpi4py`` or wrap the entry point in :func:`abort_on_exception`.
"""

from __future__ import annotations

import contextlib
import ctypes
import operator
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

#: Environment variables by which MPI launchers announce a job of several ranks. If one says more than one rank
#: but mpi4py cannot load, going on as size 1 would run R unsynchronised copies of the job: that is an error.
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
#: Rank r seeds with ``seed + r * _SEED_STRIDE``: room for a million worlds per rank seeded ``seed + k``.
_SEED_STRIDE = 1_000_003
_CUDA_MODES = ("auto", "on", "off", "probe")
_GRAD = operator.attrgetter("grad")


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


def broadcast_parameters(module: torch.nn.Module | Iterable[torch.Tensor], root: int = 0) -> None:
    """Overwrite every rank's parameters (and a module's buffers) with rank ``root``'s: one ``Bcast`` per dtype."""
    state = _state()
    if state.size == 1:
        return
    tensors = [*module.parameters(), *module.buffers()] if isinstance(module, torch.nn.Module) else list(module)
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    # Sorted so that every rank walks the groups in the same order.
    for _kind, group in sorted(groups.items(), key=lambda item: str(item[0])):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        # A broadcast only moves bytes: half-precision values travel as int16, which MPI and numpy both know.
        raw = flat.view(torch.int16) if flat.dtype in (torch.bfloat16, torch.float16) else flat
        with torch.no_grad():
            _collective(raw, lambda buf: state.comm.Bcast(buf, root=root))
            for tensor, chunk in zip(group, flat.split([t.numel() for t in group]), strict=True):
                tensor.copy_(chunk.view_as(tensor))


class GradientAllreducer:
    """Keeps the gradients of ``params`` as views into one flat buffer and averages them across ranks in one call.

    Every parameter's ``.grad`` is a view into :attr:`flat`, allocated once; ``backward()`` accumulates into those
    views in place, so :meth:`allreduce` is a scaling by ``1 / size`` and a single in-place ``Allreduce`` of the
    buffer, with no flattening or copying back. A buffer over ``chunk_bytes`` goes in several calls on
    consecutive slices of it: MPICH here reduces a 42 MB buffer 3x faster as 4 MB pieces than in one call, and
    pieces of a few MB already run at full bandwidth on networks.

    The rule: clear gradients with :meth:`zero_grad` (or ``optimizer.zero_grad(set_to_none=False)``). The default
    ``optimizer.zero_grad()`` sets them to ``None`` and the next backward allocates new tensors; :meth:`allreduce`
    notices, copies them into the buffer and re-attaches the views (correct, but it costs a copy per tensor and
    prints a notice once).

    Args:
        params: the parameters to average (those without ``requires_grad`` are left out). All of one dtype and
            device: make one reducer per group otherwise.
        mpi_cuda: for CUDA parameters, ``"auto"``, ``"on"``, ``"off"`` or ``"probe"``; see :func:`cuda_aware`.
        staged: force the path through a host buffer (``True``) or MPI on the buffer itself (``False``); ``None``
            chooses: staged exactly for CUDA buffers when the MPI is not CUDA-aware.
        chunk_bytes: the most bytes per ``Allreduce`` call (0: the whole buffer in one call).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        mpi_cuda: str | None = None,
        staged: bool | None = None,
        chunk_bytes: int = 4 << 20,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GradientAllreducer needs at least one parameter with requires_grad=True")
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"parameters of several dtypes/devices {sorted(map(str, kinds))}: one reducer per group")
        dtype, device = kinds.pop()
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=dtype, device=device)
        _check_reducible(self.flat)
        self._views = [
            v.view_as(p) for v, p in zip(self.flat.split([p.numel() for p in self.params]), self.params, strict=True)
        ]
        for p, view in zip(self.params, self._views, strict=True):
            if p.grad is not None:
                view.copy_(p.grad)
            p.grad = view
        state = _state()
        if staged is None:
            staged = device.type == "cuda" and state.size > 1 and not cuda_aware(mpi_cuda)
        self.staged = staged
        self._host: torch.Tensor | None = None
        if staged:
            self._host = torch.empty(self.flat.numel(), dtype=dtype, pin_memory=torch.cuda.is_available())
        # MPI reads CPU memory through numpy views made once, so that a call costs what a raw mpi4py call costs.
        target = self._host if staged else self.flat
        self._buffer = target.numpy() if target.device.type == "cpu" else target
        step = max(1, chunk_bytes // self.flat.element_size()) if chunk_bytes > 0 else len(self._buffer)
        self._chunks = [self._buffer[i : i + step] for i in range(0, len(self._buffer), step)]
        self._size, self._scale = state.size, 1.0 / state.size
        self._sync_cuda = device.type == "cuda" and not staged
        self._reduce = partial(state.comm.Allreduce, state.MPI.IN_PLACE, op=state.MPI.SUM) if state.size > 1 else None
        self._warned = False

    @property
    def num_params(self) -> int:
        """The number of scalars averaged per call."""
        return self.flat.numel()

    def zero_grad(self) -> None:
        """Zero every gradient in place (one fill of the buffer), keeping the views attached."""
        self.flat.zero_()
        self._attach()

    def allreduce(self) -> None:
        """Average the gradients over all ranks, in place. Call after ``backward()``, before ``optimizer.step()``."""
        self._attach()
        if self._reduce is None:
            return
        # Each rank scales by 1/size before the sum, while backward's output is still in cache: MPI leaves its result
        # out of cache, so a pass after it costs several times more (5-7 us against ~1.5 us for 14K floats here).
        if self._host is not None:
            # Staged: the blocking device-to-host copy waits for backward; the copy back is ordered on the stream
            # before the optimizer's kernels, and the next call's blocking copy waits for it before MPI writes again.
            self._host.copy_(self.flat)
            np.multiply(self._buffer, self._scale, out=self._buffer)
        elif self._sync_cuda:
            self.flat.mul_(self._scale)
            torch.cuda.current_stream(self.flat.device).synchronize()
        else:
            np.multiply(self._buffer, self._scale, out=self._buffer)
        for chunk in self._chunks:
            self._reduce(chunk)
        if self._host is not None:
            self.flat.copy_(self._host, non_blocking=True)

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale the gradients so that their global L2 norm is at most ``max_norm``; returns the norm before.

        One norm of the flat buffer instead of one per tensor; after :meth:`allreduce` it is the same on all ranks.
        """
        self._attach()
        norm = torch.linalg.vector_norm(self.flat)
        self.flat.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return float(norm)

    def _attach(self) -> None:
        if all(map(operator.is_, map(_GRAD, self.params), self._views)):  # the usual case, in ~1.5 us
            return
        for p, view in zip(self.params, self._views, strict=True):
            if p.grad is view:
                continue
            if not self._warned:
                self._warned = True
                log(
                    "agora.learners.mpi: gradients were detached from the flat buffer (optimizer.zero_grad() sets "
                    "them to None); use GradientAllreducer.zero_grad() or zero_grad(set_to_none=False) to avoid a "
                    "copy per tensor",
                    file=sys.stderr,
                )
            with torch.no_grad():
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
            p.grad = view


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


# ---------------------------------------------------------------------------------------------- CUDA


def select_device(prefer: str = "auto") -> torch.device:
    """The device this rank trains on: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA where there is a GPU).

    With CUDA, rank r takes visible GPU ``local_rank() % device_count()`` and makes it current; launchers that give
    each rank its own GPU through ``CUDA_VISIBLE_DEVICES`` leave one visible, so every rank takes GPU 0 of its set.
    Collective: all ranks must land on the same kind of device.
    """
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {prefer!r}: use 'auto', 'cpu' or 'cuda'")
    use_cuda = prefer != "cpu" and torch.cuda.is_available()
    if prefer == "cuda" and not use_cuda:
        raise RuntimeError("device 'cuda' asked for, but torch sees no GPU (torch.cuda.is_available() is False)")
    if size() > 1 and allreduce_min(float(use_cuda)) != allreduce_max(float(use_cuda)):
        raise RuntimeError("some ranks have a GPU and some do not: pass device='cpu' or give every rank a GPU")
    if not use_cuda:
        return torch.device("cpu")
    index = local_rank() % torch.cuda.device_count()
    if local_size() > torch.cuda.device_count():
        log(f"agora.learners.mpi: {local_size()} ranks per node share {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cuda_aware(mode: str | None = None) -> bool:
    """Whether MPI may be handed CUDA buffers directly. Collective the first time (every rank calls it together).

    ``mode`` (default: ``$AGORA_MPI_CUDA``, else ``"auto"``): ``"on"`` or ``"off"`` decide outright. ``"auto"`` asks
    the library (``MPIX_Query_cuda_support`` in Open MPI and MPICH, ``MPIX_GPU_query_support`` in MPICH, the
    library version string, ``MPICH_GPU_SUPPORT_ENABLED`` for Cray MPICH) and, where it claims support, confirms
    with a one-time probe: an allreduce of a small CUDA tensor whose result is checked. A library that does not say
    is treated as not CUDA-aware, because handing device memory to one that is not can crash the process; ``"probe"``
    runs the probe anyway (opt-in). All ranks agree on the answer.
    """
    state = _state()
    mode = (mode or os.environ.get("AGORA_MPI_CUDA") or "auto").lower()
    if mode not in _CUDA_MODES:
        raise ValueError(f"mpi_cuda {mode!r}: use one of {_CUDA_MODES}")
    if mode in ("on", "off"):
        return mode == "on"
    if state.cuda_aware is not None:
        return state.cuda_aware
    if state.size == 1 or not torch.cuda.is_available():
        state.cuda_aware = False
        return False
    claims, _why = library_cuda_support()
    # One rank's "no" is everyone's "no": the decision must be the same on every rank.
    probe = allreduce_min(1.0 if (claims or mode == "probe") else 0.0) == 1.0
    state.cuda_aware = probe and _probe_cuda(state)
    log(f"agora.learners.mpi: CUDA-aware MPI {'yes' if state.cuda_aware else 'no: staging through host memory'}")
    return state.cuda_aware


def library_cuda_support() -> tuple[bool, str]:
    """Whether the MPI library says it takes CUDA buffers, and how it says so (for ``agora doctor``).

    Asks ``MPIX_Query_cuda_support`` (Open MPI, MPICH), ``MPIX_GPU_query_support`` (MPICH), ``MPICH_GPU_SUPPORT_ENABLED``
    (Cray MPICH) and the library version string (MVAPICH2-GDR, builds configured with CUDA), in that order. Not
    collective; ``(False, why)`` without MPI.
    """
    MPI = _state().MPI  # noqa: N806 (the module's own name)
    if MPI is None:
        return False, "no MPI library loaded"
    version = MPI.Get_library_version()
    path = library_path()
    lib = ctypes.CDLL(path) if path else None
    query = getattr(lib, "MPIX_Query_cuda_support", None) if lib is not None else None
    if query is not None:
        query.restype = ctypes.c_int
        if query():
            return True, "MPIX_Query_cuda_support() = 1"
    gpu_query = getattr(lib, "MPIX_GPU_query_support", None) if lib is not None else None
    if gpu_query is not None:
        supported = ctypes.c_int(0)
        if gpu_query(0, ctypes.byref(supported)) == 0 and supported.value:  # 0 is MPIX_GPU_SUPPORT_CUDA
            return True, "MPIX_GPU_query_support(CUDA) = 1"
    if "CRAY MPICH" in version.upper() and os.environ.get("MPICH_GPU_SUPPORT_ENABLED") == "1":
        return True, "Cray MPICH with MPICH_GPU_SUPPORT_ENABLED=1"
    for mark in ("MVAPICH2-GDR", "MVAPICH-Plus", "--with-cuda", "--enable-cuda"):
        if mark in version:
            return True, f"library version string names {mark}"
    asked = [name for name, fn in (("MPIX_Query_cuda_support", query), ("MPIX_GPU_query_support", gpu_query)) if fn]
    return False, f"{' and '.join(asked)}: no" if asked else "the library has no CUDA query and does not say"


def library_path() -> str | None:
    """The file of the MPI library mpi4py loaded (what ``python -m mpi4py --mpi-library`` prints), or None."""

    class _DlInfo(ctypes.Structure):
        _fields_ = [
            ("fname", ctypes.c_char_p),
            ("fbase", ctypes.c_void_p),
            ("sname", ctypes.c_char_p),
            ("saddr", ctypes.c_void_p),
        ]

    MPI = _state().MPI  # noqa: N806
    if MPI is None:
        return None
    try:
        dladdr = ctypes.CDLL(None).dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        symbol = ctypes.cast(ctypes.CDLL(MPI.__file__).MPI_Init, ctypes.c_void_p)
        info = _DlInfo()
        return os.fsdecode(info.fname) if dladdr(symbol, ctypes.byref(info)) else None
    except (OSError, AttributeError):
        return None


def _probe_cuda(state: type[_State]) -> bool:
    probe = torch.full((4,), float(state.rank + 1), device="cuda")
    torch.cuda.current_stream().synchronize()
    state.comm.Allreduce(state.MPI.IN_PLACE, probe, op=state.MPI.SUM)
    ok = bool((probe.cpu() == state.size * (state.size + 1) / 2).all())
    return allreduce_min(float(ok)) == 1.0


# ---------------------------------------------------------------------------------------------- buffers


def _check_reducible(t: torch.Tensor | np.ndarray) -> None:
    if t.dtype in (torch.bfloat16, torch.float16, np.float16):
        raise TypeError(f"MPI has no portable type for {t.dtype}: reduce in float32 (x.float()) and convert back")


def _collective(buf: torch.Tensor | np.ndarray, call: Any) -> None:
    """Run ``call`` on ``buf``: numpy and CPU tensors directly, CUDA tensors directly or through host memory."""
    if isinstance(buf, np.ndarray) or buf.device.type == "cpu":
        call(buf if isinstance(buf, np.ndarray) else buf.numpy())
        return
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
