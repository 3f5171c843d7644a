"""Tensors over MPI: reductions where the tensor lives (CUDA buffers directly or staged), and the parameter check.

CPU tensors reach MPI as numpy views. CUDA tensors go to MPI directly when the library is CUDA-aware and through
host memory otherwise (:func:`learners.mpi.cuda.cuda_aware`). MPI has no portable half-precision type: bfloat16 and
float16 tensors are refused with the fix (reduce in float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from agora_marl.learners.mpi.core import communicator, mpi_module, size
from agora_marl.learners.mpi.cuda import cuda_aware


class ParameterDriftError(RuntimeError):
    """The ranks' parameters no longer agree."""


def check_reducible(t: torch.Tensor | np.ndarray) -> None:
    """Raise TypeError for a tensor or array of a dtype MPI cannot reduce portably (half precision)."""
    if t.dtype in (torch.bfloat16, torch.float16, np.float16):
        raise TypeError(f"MPI has no portable type for {t.dtype}: reduce in float32 (x.float()) and convert back")


def on_buffer(buf: torch.Tensor, call: Callable[[Any], None]) -> None:
    """Run the MPI ``call`` on ``buf`` in place: a CPU tensor as a numpy view, a CUDA tensor directly or staged.

    Staging copies through pageable host memory: for small and rare buffers (statistics, the first broadcast); the
    gradients have their own pinned buffer (learners.mpi.gradients).
    """
    if buf.device.type == "cpu":
        call(buf.numpy())
        return
    torch.cuda.current_stream(buf.device).synchronize()
    if cuda_aware():
        call(buf)
        return
    host = buf.cpu()
    call(host.numpy())
    buf.copy_(host)


def allreduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``x`` over all ranks: a new tensor on ``x``'s device; one call."""
    return _reduce(x, "SUM")


def allreduce_max(x: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``x`` over all ranks; one call."""
    return _reduce(x, "MAX")


def allreduce_min(x: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of ``x`` over all ranks; one call."""
    return _reduce(x, "MIN")


def allreduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The elementwise mean of ``x`` over all ranks; one call."""
    return _reduce(x, "SUM") / size()


def check_in_sync(module: torch.nn.Module | Iterable[torch.Tensor], rtol: float = 1e-9) -> None:
    """Raise :class:`ParameterDriftError` on every rank if the ranks' parameters differ.

    Compares a float64 checksum (sum, sum of squares and sum of absolute values of all parameters) across ranks with
    one ``Allgather``; identical parameters give identical checksums. Cheap: call it every N updates.
    """
    ranks = size()
    if ranks == 1:
        return
    tensors = list(module.parameters()) if isinstance(module, torch.nn.Module) else list(module)
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).double()
        sums = torch.stack([flat.sum(), flat.dot(flat), flat.abs().sum()]).cpu()
    rows = np.empty((ranks, 3))
    communicator().Allgather(sums.numpy(), rows)
    scale = np.maximum(np.abs(rows[0, [2, 1]]), 1e-30)
    drift = np.abs(rows[:, :2] - rows[0, :2]) > rtol * scale
    if drift.any():
        bad = sorted({int(r) for r in np.nonzero(drift.any(axis=1))[0]})
        table = "; ".join(f"rank {r}: sum={rows[r, 0]:.12g} sumsq={rows[r, 1]:.12g}" for r in range(ranks))
        raise ParameterDriftError(
            f"parameters of rank(s) {bad} differ from rank 0's ({table}). Every rank must start from "
            "broadcast_parameters() and apply the same averaged update: look for a rank that skipped an "
            "allreduce or an optimizer step, or updated parameters outside the optimizer"
        )


def _reduce(x: torch.Tensor, op: str) -> torch.Tensor:
    check_reducible(x)
    out = x.detach().clone().contiguous()
    if size() > 1:
        MPI, comm = mpi_module(), communicator()  # noqa: N806 (the module's own name)
        on_buffer(out, lambda buf: comm.Allreduce(MPI.IN_PLACE, buf, op=getattr(MPI, op)))
    return out
