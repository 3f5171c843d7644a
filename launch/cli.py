"""The ``agora`` command: one entry point, a subcommand per job.

Each subcommand lives in ``launch/commands/<name>.py`` with ``register(subparsers)``, which adds its parser and sets
``func``. Those modules import their heavy dependencies (torch, the server) inside ``run`` so that ``agora --help``
and ``agora play`` start fast.

A server's refusal (``agents.client.ServerError``: code, message and hint) and a server that does not answer (the
client's ``TimeoutError``) are the user's situation, not a bug: :func:`main` prints them as one line and exits 1.
Any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from agora_marl import __version__

#: Subcommands in the order ``agora --help`` lists them.
COMMANDS = (
    "serve",
    "play",
    "train",
    "eval",
    "plot",
    "scenarios",
    "learners",
    "record",
    "doctor",
    "keys",
    "watch",
    "worlds",
    "conformance",
)

_DESCRIPTION = """\
agora: shared multi-agent worlds behind a ZeroMQ server, and learners that train in them.

  agora serve                 host worlds for agent clients and learners
  agora play                  join a world as a client and play a policy in a seat
  agora train                 train a learner: mappo, ippo, idqn or your own (default: MAPPO on simple_spread)
  agora eval RUN_DIR          play a trained run greedily and print its mean and std return
  agora plot RUN_DIR          write the learning curve PNG of one or more runs
  agora scenarios list|check|new   see, check and author worlds
  agora learners list|check|new    see, check and author learning algorithms
  agora record                render an episode played by given policies into a GIF
  agora doctor                check MPI, GPUs, threads and env servers (run it as the job runs: mpirun -n R ...)
  agora keys new NAME         make CurveZMQ keys for a server and the clients it lets in
  agora watch                 a live web page of a server's worlds (and a run's learning curve)
  agora worlds                print a server's worlds: seats, holders, ticks, steps/s, returns
  agora conformance ADDR      check a running server (any implementation) against the protocol

Run `agora COMMAND --help` for the options of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agora", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"agora {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"agora_marl.launch.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader that went away is caught below, not at the interpreter's exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `agora ... | head` closed the pipe: stop quietly, as Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except Exception as exc:
        if not _from_the_server(exc):
            raise
        print(f"agora {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _from_the_server(exc: BaseException) -> bool:
    """A refusal or silence of a server (not a bug of ours): a ServerError, or a TimeoutError waiting for a reply."""
    if isinstance(exc, TimeoutError):
        return True
    # Looked up, not imported: a command that never loaded the client cannot have raised its errors.
    client = sys.modules.get("agora_marl.agents.client")
    return client is not None and isinstance(exc, client.ServerError)


if __name__ == "__main__":
    sys.exit(main())
