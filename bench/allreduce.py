"""Gradient allreduce: learners.mpi's one-buffer path against raw mpi4py and against one call per tensor.

Run under MPI (figures are per call, median over repetitions, the slowest rank of each repetition)::

    mpirun -n 2 python -m mpi4py bench/allreduce.py [--reps 2000] [--big-reps 40]

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
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from mpi4py import MPI
from torch import nn

from agora_marl.learners import mpi
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


def measure(model: nn.Module, reps: int, warmup: int) -> dict[str, np.ndarray]:
    """Seconds per call of each method in each repetition (the slowest rank's time).

    Before each timed call its buffer is overwritten with fresh gradient values, untimed, as backward would: so every
    method starts from the cache state a real step leaves, and values stay finite.
    """
    comm = MPI.COMM_WORLD
    methods = _methods(model)
    names = list(methods)
    fresh = np.random.default_rng(comm.Get_rank()).standard_normal(len(methods["raw"][0])).astype(np.float32)
    times = {name: np.empty(reps) for name in names}
    slowest = np.empty(1)
    for rep in range(-warmup, reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            buffer, call = methods[name]
            np.copyto(buffer, fresh)
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
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if mpi.size() < 2:
        mpi.log("note: one rank; run under `mpirun -n 2 python -m mpi4py bench/allreduce.py` for real figures")
    mpi.log(f"{MPI.Get_library_version().splitlines()[0]}; {mpi.size()} ranks; float32; per call, slowest rank")
    columns = ("ours", "raw", "raw_avg", "per_tensor", "cat_copy")
    ratios = (("ours", "raw"), ("ours", "raw_avg"), ("per_tensor", "ours"), ("cat_copy", "ours"))
    header = f"{'model':<36}{'params':>11}{'tensors':>8}" + "".join(f"{c:>11}" for c in columns)
    mpi.log(header + "".join(f"{f'{a}/{b}':>16}" for a, b in ratios))
    for label, model, reps in (
        ("MAPPO actor+critic (spread)", default_networks(), args.reps),
        ("10M-parameter MLP", big_network(), args.big_reps),
    ):
        tensors = list(model.parameters())
        times = measure(model, reps, warmup=max(3, reps // 20))
        for statistic, reduce in (("median", np.median), ("min", np.min)):
            result = {name: float(reduce(t)) for name, t in times.items()}
            line = f"{label + ', ' + statistic:<36}{sum(p.numel() for p in tensors):>11,}{len(tensors):>8}"
            line += "".join(f"{_fmt(result[c] * 1e6):>11}" for c in columns)
            mpi.log(line + "".join(f"{result[a] / result[b]:>16.2f}" for a, b in ratios))


def _fmt(microseconds: float) -> str:
    return f"{microseconds:.1f} us" if microseconds < 10_000 else f"{microseconds / 1000:.2f} ms"


if __name__ == "__main__":
    main()
