"""Parameters from rank 0, and gradients averaged with one in-place Allreduce of one flat buffer (imports torch)."""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Sequence
from functools import partial

import numpy as np
import torch

from agora_marl.learners.mpi.core import communicator, log, mpi_module, size
from agora_marl.learners.mpi.cuda import cuda_aware
from agora_marl.learners.mpi.tensors import check_reducible, on_buffer

_GRAD = operator.attrgetter("grad")


def broadcast_parameters(module: torch.nn.Module | Iterable[torch.Tensor], root: int = 0) -> None:
    """Overwrite every rank's parameters (and a module's buffers) with rank ``root``'s: one ``Bcast`` per dtype."""
    if size() == 1:
        return
    comm = communicator()
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
            on_buffer(raw, lambda buf: comm.Bcast(buf, root=root))
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
        check_reducible(self.flat)
        self._views = [
            v.view_as(p) for v, p in zip(self.flat.split([p.numel() for p in self.params]), self.params, strict=True)
        ]
        for p, view in zip(self.params, self._views, strict=True):
            if p.grad is not None:
                view.copy_(p.grad)
            p.grad = view
        ranks = size()
        if staged is None:
            staged = device.type == "cuda" and ranks > 1 and not cuda_aware(mpi_cuda)
        self.staged = staged
        self._host: torch.Tensor | None = None
        if staged:
            self._host = torch.empty(self.flat.numel(), dtype=dtype, pin_memory=torch.cuda.is_available())
        # MPI reads CPU memory through numpy views made once, so that a call costs what a raw mpi4py call costs.
        target = self._host if staged else self.flat
        self._buffer = target.numpy() if target.device.type == "cpu" else target
        step = max(1, chunk_bytes // self.flat.element_size()) if chunk_bytes > 0 else len(self._buffer)
        self._chunks = [self._buffer[i : i + step] for i in range(0, len(self._buffer), step)]
        self._scale = 1.0 / ranks
        self._sync_cuda = device.type == "cuda" and not staged
        MPI = mpi_module()  # noqa: N806 (the module's own name)
        self._reduce = partial(communicator().Allreduce, MPI.IN_PLACE, op=MPI.SUM) if ranks > 1 else None
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

    def part(self, params: Iterable[torch.Tensor]) -> slice:
        """The slice of :attr:`flat` that holds the gradients of ``params``: consecutive parameters of this reducer.

        For :meth:`clip_grad_norm_` by groups (PPO clips actor and critic separately).
        """
        wanted = [id(p) for p in params]
        starts = np.cumsum([0] + [p.numel() for p in self.params])
        index = {id(p): i for i, p in enumerate(self.params)}
        if not wanted or any(key not in index for key in wanted):
            raise ValueError("part() takes parameters of this reducer (with requires_grad)")
        first = index[wanted[0]]
        if [index[key] for key in wanted] != list(range(first, first + len(wanted))):
            raise ValueError("part() takes consecutive parameters of this reducer, in its order")
        return slice(int(starts[first]), int(starts[first + len(wanted)]))

    def clip_grad_norm_(self, max_norm: float, parts: Sequence[slice] = ()) -> float:
        """Scale the gradients so that their L2 norm is at most ``max_norm``; returns the largest norm before.

        Without ``parts``, the norm of all gradients together: one norm of the flat buffer instead of one per tensor.
        With ``parts`` (from :meth:`part`), each part's gradients are clipped on their own. After :meth:`allreduce`
        the norms are the same on all ranks.
        """
        self._attach()
        pieces = [self.flat[part] for part in parts] if parts else [self.flat]
        norms = torch.stack([torch.linalg.vector_norm(piece) for piece in pieces])
        scales = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for piece, scale in zip(pieces, scales, strict=True):
            piece.mul_(scale)
        return float(norms.max())

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
