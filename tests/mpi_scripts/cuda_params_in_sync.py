"""Run under ``mpirun -n R``: the ranks train one small net on different data and must keep identical parameters.

For each path, every rank starts from its own random parameters, takes rank 0's (``broadcast_parameters``) and trains
``--steps`` Adam updates on its own batches through ``GradientAllreducer``. It checks that the local gradients differ
across ranks (so agreement is earned), that each averaged gradient is the mean of the ranks' local ones, that
``tensors.allreduce_sum`` of a tensor on the device is right (``tensors.on_buffer``: the stream synchronisation and
the staging of small buffers), ``tensors.check_in_sync`` every 10 updates, and at the end that every rank's
parameters are bitwise rank 0's (their bytes, gathered). Rank 0 prints ``OK in sync DEVICE PATH ...`` per path,
``SKIP direct: ...`` where the MPI is not CUDA-aware, and ``OK all``::

    mpirun -n 2 python -m mpi4py tests/mpi_scripts/cuda_params_in_sync.py [--device cpu|cuda] [--steps 50]

Paths: on CPU the reducer's own (MPI on the buffer's numpy view); on CUDA ``staged`` (pinned host memory) and, when
``cuda_aware()`` says yes (``--mpi-cuda auto``, or ``on`` to force it), ``direct`` (the CUDA buffer to MPI).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from agora_marl.learners import mpi
from agora_marl.learners.mpi import cuda, tensors
from agora_marl.learners.mpi.gradients import GradientAllreducer, broadcast_parameters

BATCH, INPUTS, OUTPUTS = 64, 16, 4


def make_net(seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(INPUTS, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, OUTPUTS)).to(device)


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu()


def train(device: torch.device, staged: bool | None, steps: int, mpi_cuda: str) -> str:
    """Train ``steps`` updates on this path and check agreement; the path's name and its figures, for the OK line."""
    r, n = mpi.rank(), mpi.size()
    net = make_net(100 + r, device)
    broadcast_parameters(net)
    start = flat_params(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    reducer = GradientAllreducer(net.parameters(), mpi_cuda=mpi_cuda, staged=staged)
    if staged is not None:
        assert reducer.staged == staged, (reducer.staged, staged)
    generator = torch.Generator().manual_seed(1000 * r + 1)
    largest_error = 0.0
    for step in range(steps):
        reducer.zero_grad()
        x, y = torch.randn(BATCH, INPUTS, generator=generator), torch.randn(BATCH, OUTPUTS, generator=generator)
        ((net(x.to(device)) - y.to(device)) ** 2).mean().backward()
        local = reducer.flat.detach().cpu()
        everyone = mpi.allgather_object(local.numpy())
        if step == 0:
            assert len({a.tobytes() for a in everyone}) == n, "the ranks' local gradients are equal: no test"
        reducer.allreduce()
        expected = torch.from_numpy(np.sum([a * np.float32(1.0 / n) for a in everyone], axis=0))
        error = float((reducer.flat.cpu() - expected).abs().max())
        assert torch.allclose(reducer.flat.cpu(), expected, rtol=1e-6, atol=1e-8), f"step {step}: error {error}"
        largest_error = max(largest_error, error)
        reducer.clip_grad_norm_(1.0)
        optimizer.step()
        if (step + 1) % 10 == 0:
            tensors.check_in_sync(net)
    total = tensors.allreduce_sum(torch.full((3,), float(r + 1), device=device))
    assert total.device == device and torch.equal(total.cpu(), torch.full((3,), n * (n + 1) / 2)), total
    tensors.check_in_sync(net)
    mine = flat_params(net)
    assert not torch.equal(mine, start), "training did not change the parameters"
    rows = mpi.allgather_object(mine.numpy().tobytes())
    differ = [i for i, row in enumerate(rows) if row != rows[0]]
    assert not differ, f"rank(s) {differ} hold parameters that differ from rank 0's in their bytes"
    path = "host" if device.type == "cpu" else ("staged" if reducer.staged else "direct")
    return (
        f"{device.type} {path} after {steps} updates on {n} ranks: {mine.numel()} parameters bitwise equal, "
        f"averaged gradients within {largest_error:.1e} of the mean of the local ones"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mpi-cuda", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args()
    assert mpi.size() >= 2, "run me under mpirun -n 2 or more"
    torch.set_num_threads(1)
    device = cuda.select_device(args.device)
    report: list[str] = []
    if device.type == "cpu":
        report.append(f"OK in sync {train(device, None, args.steps, args.mpi_cuda)}")
    else:
        if args.mpi_cuda != "on":
            report.append(f"OK in sync {train(device, True, args.steps, args.mpi_cuda)}")
        if args.mpi_cuda == "on" or (args.mpi_cuda == "auto" and cuda.cuda_aware("auto")):
            report.append(f"OK in sync {train(device, False, args.steps, args.mpi_cuda)}")
        else:
            why = cuda.library_cuda_support()[1]
            report.append(f"SKIP direct: the MPI is not CUDA-aware (library: {why}; mpi_cuda={args.mpi_cuda})")
    mpi.barrier()
    for line in [*report, "OK all"]:
        mpi.log(line)


if __name__ == "__main__":
    main()
