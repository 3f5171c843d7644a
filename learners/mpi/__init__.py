"""Data parallelism over MPI, in plain functions that do nothing when there is one process.

This package is the only part of agora that imports mpi4py (in ``core``), and it does so lazily: a learner started
without an MPI launcher runs as rank 0 of 1, and one on a machine with no MPI library at all does too (after a
one-line notice). The package itself imports no torch (``agora serve`` runs as an MPI rank through it): it is the
process's MPI view (``core``: ranks, nodes, MPMD roles, object collectives, statistics of floats and numpy arrays).
The torch parts are modules of their own, imported by name:

- :mod:`.tensors`: reductions of tensors where they live, and :func:`~.tensors.check_in_sync`;
- :mod:`.gradients`: :func:`~.gradients.broadcast_parameters` and :class:`~.gradients.GradientAllreducer`;
- :mod:`.cuda`: the device a rank trains on, and whether MPI takes CUDA buffers (:func:`~.cuda.cuda_aware`).

Under ``mpirun -n R`` every rank runs the same learner on its own worlds and:

- starts from rank 0's parameters (``gradients.broadcast_parameters``);
- averages gradients after each backward pass with one in-place ``Allreduce`` of one flat buffer that the
  parameters' ``.grad`` tensors are views into (``gradients.GradientAllreducer``), so nothing is copied;
- reduces statistics the same way, one call per vector (:func:`allreduce_mean`, :func:`mean_std`);
- checks every so often that the parameters still agree (``tensors.check_in_sync``).

A job may also mix kinds of processes (MPMD: ``mpirun -n 4 agora train : -n 2 agora serve``): each joins with its
role (:func:`join`), the collectives here run among one role's ranks, and what each process announced (a server's
addresses) reaches every other (:func:`published`); the learners release the servers when done
(:func:`release_servers`).

An exception in one rank must end the job rather than leave the others waiting in a collective: run under
``python -m mpi4py`` or wrap the entry point in :func:`abort_on_exception`.
"""

from agora_marl.learners.mpi.core import (
    LAUNCHERS,
    Launcher,
    abort_on_exception,
    allgather_object,
    allreduce_max,
    allreduce_mean,
    allreduce_min,
    allreduce_sum,
    barrier,
    broadcast_object,
    communicator,
    fair_threads,
    gather_object,
    is_root,
    join,
    launched_by_mpi,
    learners_released,
    local_rank,
    local_size,
    log,
    mean_std,
    mpi_module,
    node_barrier,
    node_broadcast_object,
    node_cores,
    published,
    rank,
    release_servers,
    seed_for_rank,
    size,
)

__all__ = [
    "LAUNCHERS",
    "Launcher",
    "abort_on_exception",
    "allgather_object",
    "allreduce_max",
    "allreduce_mean",
    "allreduce_min",
    "allreduce_sum",
    "barrier",
    "broadcast_object",
    "communicator",
    "fair_threads",
    "gather_object",
    "is_root",
    "join",
    "launched_by_mpi",
    "learners_released",
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
    "size",
]
