"""Gradient allreduce: learners.mpi's one-buffer path against raw mpi4py and against one call per tensor.

Run under MPI (figures are per call, median over repetitions, the slowest rank of each repetition)::

    mpirun -n 2 python -m mpi4py bench/allreduce.py [--reps 2000] [--big-reps 40] [--json FILE]
    mpirun -n 2 python -m mpi4py bench/allreduce.py --device cuda [--mpi-cuda auto|on|off]

For two models (the default MAPPO actor and critic for simple_spread, and a ~10M-parameter MLP) it times:

- ``ours``: ``GradientAllreducer.allreduce()``: one in-place ``Allreduce`` of the flat buffer the gradients view,
  then the division by the number of ranks;
- ``raw``: one in-place ``comm.Allreduce`` of a numpy float32 buffer of the same bytes, nothing else (the floor);
- ``raw_avg``: the same call followed by the in-place scaling by ``1 / size`` that averaging needs (what any
  averaging allreduce must do at least);
- ``per_tensor``: one in-place ``Allreduce`` (and division) per gradient tensor, Spinning Up's way;
- ``cat_copy``: ``torch.cat`` of the gradients, one ``Allreduce``, division, and a copy back into each tensor.

Methods take turns within each repetition, in an order that rotates, so that machine noise and cache effects hit
them alike. The target is ours/raw <= 1.1. ``ours`` reduces a buffer over 4 MB in 4 MB slices (see
learners.mpi.gradients.GradientAllreducer), which is why it can beat one raw call on the large model.
This script imports mpi4py itself, for the raw baseline; the learners reach MPI only through learners.mpi.

With ``--device cuda`` the gradients are CUDA tensors (each rank on its node-local GPU, ``select_device``) and only
``ours`` and ``raw`` are timed, on each path the MPI allows: ``staged`` (``ours`` is the reducer's copy into pinned
host memory, scaling there, ``Allreduce`` and the copy back; ``raw`` a copy into a pinned host buffer, ``Allreduce``
of its numpy view and the copy back) and ``direct`` (``ours`` scales on the GPU, synchronises the stream and hands
the CUDA buffer to MPI; ``raw`` hands the CUDA tensor itself to ``Allreduce``, which mpi4py takes through
``__cuda_array_interface__``). ``--mpi-cuda off`` times the staged path, ``on`` the direct one (you vouch that the
MPI is CUDA-aware), ``auto`` the staged one and the direct one where ``cuda_aware()`` says yes. Every CUDA call ends
with a device synchronisation inside the timed part, so a copy still in flight is counted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from mpi4py import MPI
from torch import nn

from agora_marl.learners import mpi
from agora_marl.learners.mpi import cuda
from agora_marl.learners.mpi.gradients import GradientAllreducer
from agora_marl.learners.networks import Actor, Critic


def default_networks() -> nn.Module:
    """The default MAPPO networks for simple_spread (N=3): actor on obs 18 + agent id 3, critic on state 54 + id 3."""
    actor = Actor(18 + 3, spaces.Discrete(5), [64, 64], "relu", input_norm=True)
    critic = Critic(54 + 3, [64, 64], "relu", input_norm=True)
    return nn.ModuleDict({"actor": actor, "critic": critic})


def big_network() -> nn.Module:
    """An MLP of about 10.5M parameters in 8 tensors."""
    layers = [nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(2048, 512))


def _methods(model: nn.Module) -> dict[str, tuple[np.ndarray, Callable[[], None]]]:
    """Each method's call, and the buffer that backward would have just written before it (refreshed untimed)."""
    comm, n = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_size()
    reducer = GradientAllreducer(model.parameters())
    grads = [p.grad for p in model.parameters()]  # views into reducer.flat
    grad_arrays = [g.numpy() for g in grads]
    flat = reducer.flat.numpy()
    raw = np.zeros_like(flat)

    def per_tensor() -> None:
        for array in grad_arrays:
            comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
            np.divide(array, n, out=array)

    def cat_copy() -> None:
        joined = torch.cat([g.reshape(-1) for g in grads])
        comm.Allreduce(MPI.IN_PLACE, joined.numpy(), op=MPI.SUM)
        joined.div_(n)
        for g, chunk in zip(grads, joined.split([g.numel() for g in grads]), strict=True):
            g.copy_(chunk.view_as(g))

    def raw_avg() -> None:
        comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM)
        np.multiply(raw, 1.0 / n, out=raw)

    return {
        "ours": (flat, reducer.allreduce),
        "raw": (raw, lambda: comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM)),
        "raw_avg": (raw, raw_avg),
        "per_tensor": (flat, per_tensor),
        "cat_copy": (flat, cat_copy),
    }


def _cuda_methods(model: nn.Module, direct: bool) -> dict[str, tuple[torch.Tensor, Callable[[], None]]]:
    """``ours`` and ``raw`` on CUDA buffers, on the direct or the staged path (see the module docstring)."""
    comm = MPI.COMM_WORLD
    reducer = GradientAllreducer(model.parameters(), staged=not direct)
    raw = torch.zeros_like(reducer.flat)
    if direct:

        def raw_call() -> None:
            comm.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM)
    else:
        host = torch.empty(raw.numel(), dtype=raw.dtype, pin_memory=True)
        host_array = host.numpy()

        def raw_call() -> None:
            host.copy_(raw)
            comm.Allreduce(MPI.IN_PLACE, host_array, op=MPI.SUM)
            raw.copy_(host, non_blocking=True)

    def synchronised(call: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            call()
            torch.cuda.synchronize()

        return timed

    return {"ours": (reducer.flat, synchronised(reducer.allreduce)), "raw": (raw, synchronised(raw_call))}


def measure(
    methods: dict[str, tuple[np.ndarray | torch.Tensor, Callable[[], None]]], reps: int, warmup: int
) -> dict[str, np.ndarray]:
    """Seconds per call of each method in each repetition (the slowest rank's time).

    Before each timed call its buffer is overwritten with fresh gradient values, untimed, as backward would: so every
    method starts from the cache state a real step leaves, and values stay finite.
    """
    comm = MPI.COMM_WORLD
    names = list(methods)
    fresh = np.random.default_rng(comm.Get_rank()).standard_normal(len(methods["raw"][0])).astype(np.float32)
    device = methods["raw"][0].device if isinstance(methods["raw"][0], torch.Tensor) else None
    fresh_tensor = torch.from_numpy(fresh).to(device) if device is not None else None
    times = {name: np.empty(reps) for name in names}
    slowest = np.empty(1)
    for rep in range(-warmup, reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            buffer, call = methods[name]
            if fresh_tensor is None:
                np.copyto(buffer, fresh)
            else:
                buffer.copy_(fresh_tensor)
                torch.cuda.synchronize()
            comm.Barrier()
            start = time.perf_counter()
            call()
            elapsed = np.array([time.perf_counter() - start])
            comm.Allreduce(elapsed, slowest, op=MPI.MAX)
            if rep >= 0:
                times[name][rep] = slowest[0]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions for the default networks")
    parser.add_argument("--big-reps", type=int, default=40, help="repetitions for the 10M-parameter model")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the gradients live")
    parser.add_argument(
        "--mpi-cuda",
        choices=("auto", "on", "off"),
        default="auto",
        help="with --device cuda: the staged path (off), the direct one (on), or staged and direct if CUDA-aware",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON (rank 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if mpi.size() < 2:
        mpi.log("note: one rank; run under `mpirun -n 2 python -m mpi4py bench/allreduce.py` for real figures")
    library = MPI.Get_library_version().splitlines()[0]
    figures: dict = {"library": library, "ranks": mpi.size(), "device": args.device, "results": [], "notes": []}
    if args.device == "cpu":
        _cpu(args, library, figures)
    else:
        _cuda(args, library, figures)
    if args.json and mpi.is_root():
        args.json.write_text(json.dumps(figures, indent=2))


def _cpu(args: argparse.Namespace, library: str, figures: dict) -> None:
    mpi.log(f"{library}; {mpi.size()} ranks; float32; per call, slowest rank")
    columns = ("ours", "raw", "raw_avg", "per_tensor", "cat_copy")
    ratios = (("ours", "raw"), ("ours", "raw_avg"), ("per_tensor", "ours"), ("cat_copy", "ours"))
    header = f"{'model':<36}{'params':>11}{'tensors':>8}" + "".join(f"{c:>11}" for c in columns)
    mpi.log(header + "".join(f"{f'{a}/{b}':>16}" for a, b in ratios))
    for label, model, reps in (
        ("MAPPO actor+critic (spread)", default_networks(), args.reps),
        ("10M-parameter MLP", big_network(), args.big_reps),
    ):
        tensors = list(model.parameters())
        times = measure(_methods(model), reps, warmup=max(3, reps // 20))
        _report(figures, label, "host", tensors, times, columns, ratios)


def _cuda(args: argparse.Namespace, library: str, figures: dict) -> None:
    device = cuda.select_device("cuda")
    claims, why = cuda.library_cuda_support()
    paths = {"off": ["staged"], "on": ["direct"], "auto": ["staged"]}[args.mpi_cuda]
    if args.mpi_cuda == "auto":
        if cuda.cuda_aware("auto"):
            paths.append("direct")
        else:
            note = f"direct path not timed: the MPI is not CUDA-aware (library: {why}); --mpi-cuda on forces it"
            figures["notes"].append(note)
            mpi.log(f"note: {note}")
    figures |= {"gpu": torch.cuda.get_device_name(device), "library_cuda_support": [claims, why], "paths": paths}
    mpi.log(f"{library}; {mpi.size()} ranks on {torch.cuda.get_device_name(device)}; float32; per call, slowest rank")
    columns, ratios = ("ours", "raw"), (("ours", "raw"),)
    header = f"{'model':<44}{'params':>11}{'tensors':>8}" + "".join(f"{c:>11}" for c in columns)
    mpi.log(header + "".join(f"{f'{a}/{b}':>16}" for a, b in ratios))
    for label, build, reps in (
        ("MAPPO actor+critic (spread)", default_networks, args.reps),
        ("10M-parameter MLP", big_network, args.big_reps),
    ):
        for path in paths:
            model = build().to(device)
            tensors = list(model.parameters())
            times = measure(_cuda_methods(model, direct=path == "direct"), reps, warmup=max(3, reps // 20))
            _report(figures, label, path, tensors, times, columns, ratios, width=44)


def _report(figures, label, path, tensors, times, columns, ratios, width: int = 36) -> None:
    """Print the median and min rows of one model and path (``host`` on CPU), and add them to ``figures``."""
    entry = {"model": label, "path": path, "params": sum(p.numel() for p in tensors), "tensors": len(tensors)}
    name = label if path == "host" else f"{label}, {path}"
    for statistic, reduce in (("median", np.median), ("min", np.min)):
        result = {method: float(reduce(t)) for method, t in times.items()}
        line = f"{name + ', ' + statistic:<{width}}{entry['params']:>11,}{entry['tensors']:>8}"
        line += "".join(f"{_fmt(result[c] * 1e6):>11}" for c in columns)
        mpi.log(line + "".join(f"{result[a] / result[b]:>16.2f}" for a, b in ratios))
        entry[f"{statistic}_us"] = {method: seconds * 1e6 for method, seconds in result.items()}
        entry[f"{statistic}_ratios"] = {f"{a}/{b}": result[a] / result[b] for a, b in ratios}
    figures["results"].append(entry)


def _fmt(microseconds: float) -> str:
    return f"{microseconds:.1f} us" if microseconds < 10_000 else f"{microseconds / 1000:.2f} ms"


if __name__ == "__main__":
    main()
