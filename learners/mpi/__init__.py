"""Data parallelism over MPI, in plain functions that do nothing when there is one process.

This package is the only part of agora that imports mpi4py (in ``core``), and it does so lazily: a learner started
without an MPI launcher runs as rank 0 of 1, and one on a machine with no MPI library at all does too (after a
one-line notice). ``core`` holds the process's MPI view, statistics and buffer reductions; ``gradients`` the
parameter broadcast and the flat-buffer gradient allreduce; ``cuda`` the device choice and CUDA-awareness;
``roles`` the roles of MPMD jobs.
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

from agora_marl.learners.mpi.core import (
    ParameterDriftError,
    abort_on_exception,
    allgather_object,
    allreduce_max,
    allreduce_mean,
    allreduce_min,
    allreduce_sum,
    barrier,
    broadcast_object,
    check_in_sync,
    fair_threads,
    is_root,
    local_rank,
    local_size,
    log,
    mean_std,
    mpi_module,
    node_barrier,
    node_broadcast_object,
    node_cores,
    rank,
    seed_for_rank,
    size,
)
from agora_marl.learners.mpi.cuda import cuda_aware, library_cuda_support, library_path, select_device
from agora_marl.learners.mpi.gradients import GradientAllreducer, broadcast_parameters
from agora_marl.learners.mpi.roles import join, learners_released, published, release_servers

__all__ = [
    "GradientAllreducer",
    "ParameterDriftError",
    "abort_on_exception",
    "allgather_object",
    "allreduce_max",
    "allreduce_mean",
    "allreduce_min",
    "allreduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_parameters",
    "check_in_sync",
    "cuda_aware",
    "fair_threads",
    "is_root",
    "join",
    "learners_released",
    "library_cuda_support",
    "library_path",
    "local_rank",
    "local_size",
    "log",
    "mean_std",
    "mpi_module",
    "node_barrier",
    "node_broadcast_object",
    "node_cores",
    "published",
    "rank",
    "release_servers",
    "seed_for_rank",
    "select_device",
    "size",
]
