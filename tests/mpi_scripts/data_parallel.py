"""Run under ``mpirun -n R``: checks learners.mpi's data parallelism and prints ``OK <check>`` lines per rank.

Each rank starts from different random parameters and trains on its own data; every rank can rebuild every rank's
data from the seeds, so each can compute on its own what one process on the concatenated batch would get.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from agora_marl.learners import mpi
from agora_marl.learners.mpi import tensors
from agora_marl.learners.mpi.gradients import GradientAllreducer, broadcast_parameters

BATCH = 16


def make_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def batch_of(r: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * r + step)
    return torch.randn(BATCH, 6, generator=gen), torch.randn(BATCH, 3, generator=gen)


def loss_of(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((net(x) - y) ** 2).mean()


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def ok(check: str) -> None:
    print(f"OK {check} rank {mpi.rank()}", flush=True)


def check_broadcast(net: torch.nn.Module) -> None:
    broadcast_parameters(net)
    flat = flat_params(net)
    assert torch.equal(tensors.allreduce_max(flat), tensors.allreduce_min(flat)), (
        "parameters differ after the broadcast"
    )
    assert torch.equal(flat, flat_params(make_net(0))), "the broadcast did not take rank 0's parameters"
    halves = [torch.full((3,), 1.5 + mpi.rank(), dtype=torch.bfloat16), torch.arange(4.0) * (mpi.rank() + 1)]
    broadcast_parameters(halves)
    assert torch.equal(halves[0].float(), torch.full((3,), 1.5)) and torch.equal(halves[1], torch.arange(4.0))
    ok("broadcast")


def check_averaged_gradient(net: torch.nn.Module, staged: bool, chunk_bytes: int = 4 << 20) -> None:
    reducer = GradientAllreducer(net.parameters(), staged=staged, chunk_bytes=chunk_bytes)
    assert len(reducer._chunks) == (1 if chunk_bytes > 1000 else -(-reducer.num_params // (chunk_bytes // 4)))
    reducer.zero_grad()
    loss_of(net, *batch_of(mpi.rank(), 0)).backward()
    reducer.allreduce()
    ours = reducer.flat.clone()
    # Alone: the gradient of the mean loss over every rank's batch, concatenated.
    alone = make_net(0)
    xs, ys = zip(*(batch_of(r, 0) for r in range(mpi.size())), strict=True)
    loss_of(alone, torch.cat(xs), torch.cat(ys)).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in alone.parameters()])
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-7), f"max error {(ours - expected).abs().max()}"
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(net.parameters(), reducer._views, strict=True))
    ok(f"gradient {'staged' if staged else 'direct'}{' chunked' if chunk_bytes < 1000 else ''}")


def check_training_stays_in_sync(set_to_none: bool) -> None:
    net = make_net(100 + mpi.rank())
    broadcast_parameters(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    reducer = GradientAllreducer(net.parameters())
    before = flat_params(net)
    for step in range(6):
        if set_to_none:
            optimizer.zero_grad()  # drops the views; the reducer must notice and repair
        else:
            reducer.zero_grad()
        loss_of(net, *batch_of(mpi.rank(), step)).backward()
        reducer.allreduce()
        reducer.clip_grad_norm_(10.0)
        optimizer.step()
    flat = flat_params(net)
    assert not torch.equal(flat, before), "training did not change the parameters"
    assert torch.equal(tensors.allreduce_max(flat), tensors.allreduce_min(flat)), "parameters differ after training"
    tensors.check_in_sync(net)
    ok(f"in sync after updates{' (set_to_none)' if set_to_none else ''}")


def check_statistics() -> None:
    r, n = mpi.rank(), mpi.size()
    assert mpi.allreduce_sum(float(r + 1)) == n * (n + 1) / 2
    assert mpi.allreduce_mean(2.0 * r) == n - 1
    stats = mpi.allreduce_sum(np.array([r, 1.0, 10.0 * r]))
    assert np.allclose(stats, [n * (n - 1) / 2, n, 5.0 * n * (n - 1)])
    assert mpi.allreduce_max(np.array([r], np.int64))[0] == n - 1
    assert torch.equal(tensors.allreduce_min(torch.tensor([r, -r])), torch.tensor([0, -(n - 1)]))
    assert torch.equal(tensors.allreduce_mean(torch.tensor([2.0 * r])), torch.tensor([n - 1.0]))
    samples = [np.random.default_rng(r_).normal(3.0 + r_, 1.0 + r_, size=50 + 25 * r_) for r_ in range(n)]
    mean, std = mpi.mean_std(torch.as_tensor(samples[r]))
    everything = np.concatenate(samples)
    assert np.isclose(mean, everything.mean()) and np.isclose(std, everything.std(ddof=1)), (mean, std)
    ok("statistics")


def check_drift_detected() -> None:
    net = make_net(7)
    broadcast_parameters(net)
    tensors.check_in_sync(net)
    if mpi.rank() == mpi.size() - 1:
        with torch.no_grad():
            next(net.parameters())[0, 0] += 1e-4
    try:
        tensors.check_in_sync(net)
    except tensors.ParameterDriftError as exc:
        assert f"rank(s) [{mpi.size() - 1}]" in str(exc), str(exc)
        ok("drift detected")
    else:
        raise AssertionError("check_in_sync missed a drift of 1e-4 in one parameter")


def main() -> None:
    assert mpi.size() >= 2, "run me under mpirun -n 2 or more"
    net = make_net(mpi.rank())
    check_broadcast(net)
    check_averaged_gradient(net, staged=False)
    check_averaged_gradient(make_net(0), staged=True)
    check_averaged_gradient(make_net(0), staged=False, chunk_bytes=100)
    check_training_stays_in_sync(set_to_none=False)
    check_training_stays_in_sync(set_to_none=True)
    check_statistics()
    check_drift_detected()
    assert mpi.seed_for_rank(5) == 5 + mpi.rank() * 1_000_003
    mpi.barrier()
    ok("all")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
