"""``agora serve``: ``python -m agora_marl.envserver`` as a subcommand, and as the server ranks of an MPI job."""

from __future__ import annotations

import argparse

from agora_marl.envserver.serve import DESCRIPTION, EPILOG, add_arguments, configure_logging, server_config
from agora_marl.envserver.serve import run as serve


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="host worlds for agent clients and learners",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Under an MPI launcher, one server rank (:func:`agora_marl.launch.cluster.serve_as_rank`); else the server."""
    configure_logging(args)
    from agora_marl.launch import cluster
    from agora_marl.learners import mpi

    if mpi.launched_by_mpi():  # `mpirun -n 4 agora train : -n 2 agora serve`: addresses travel over MPI
        return cluster.serve_as_rank(args, lambda bind: server_config(args, bind))
    return serve(args)
