"""Which GPU a rank uses, and whether MPI may be handed CUDA buffers directly (imports torch)."""

from __future__ import annotations

import ctypes
import os

import torch

from agora_marl.learners.mpi.core import (
    allreduce_max,
    allreduce_min,
    communicator,
    local_rank,
    local_size,
    log,
    mpi_module,
    rank,
    size,
)

_CUDA_MODES = ("auto", "on", "off", "probe")
#: The answer of :func:`cuda_aware` in ``"auto"`` and ``"probe"`` mode, once found (the same on every rank).
_decided: dict[str, bool] = {}


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
    mode = (mode or os.environ.get("AGORA_MPI_CUDA") or "auto").lower()
    if mode not in _CUDA_MODES:
        raise ValueError(f"mpi_cuda {mode!r}: use one of {_CUDA_MODES}")
    if mode in ("on", "off"):
        return mode == "on"
    if "answer" in _decided:
        return _decided["answer"]
    if size() == 1 or not torch.cuda.is_available():
        _decided["answer"] = False
        return False
    claims, _why = library_cuda_support()
    # One rank's "no" is everyone's "no": the decision must be the same on every rank.
    probe = allreduce_min(1.0 if (claims or mode == "probe") else 0.0) == 1.0
    _decided["answer"] = probe and _probe_cuda()
    log(f"agora.learners.mpi: CUDA-aware MPI {'yes' if _decided['answer'] else 'no: staging through host memory'}")
    return _decided["answer"]


def library_cuda_support() -> tuple[bool, str]:
    """Whether the MPI library says it takes CUDA buffers, and how it says so (for ``agora doctor``).

    Asks ``MPIX_Query_cuda_support`` (Open MPI, MPICH), ``MPIX_GPU_query_support`` (MPICH), ``MPICH_GPU_SUPPORT_ENABLED``
    (Cray MPICH) and the library version string (MVAPICH2-GDR, builds configured with CUDA), in that order. Not
    collective; ``(False, why)`` without MPI.
    """
    MPI = mpi_module()  # noqa: N806 (the module's own name)
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

    MPI = mpi_module()  # noqa: N806
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


def _probe_cuda() -> bool:
    MPI = mpi_module()  # noqa: N806
    probe = torch.full((4,), float(rank() + 1), device="cuda")
    torch.cuda.current_stream().synchronize()
    communicator().Allreduce(MPI.IN_PLACE, probe, op=MPI.SUM)
    ok = bool((probe.cpu() == size() * (size() + 1) / 2).all())
    return allreduce_min(float(ok)) == 1.0
