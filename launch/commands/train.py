"""``agora train``: train a learner in agora worlds; with no arguments, MAPPO on simple_spread with its own servers."""

from __future__ import annotations

import argparse
import signal
import sys

_EPILOG = """\
examples:
  agora train                                   # MAPPO on mpe2 simple_spread (N=3), own env server, one rank
  agora train algo=ippo run.total_steps=500000  # key=value overrides (see docs/learners.md for every key)
  agora train --config launch/configs/mappo_simple_tag.toml
  agora train algo=./my_algo.py:MyAlgo          # your own algorithm class (agora learners new NAME writes one)
  agora train --connect tcp://10.0.0.5:5555,tcp://10.0.0.5:5556   # use running servers
  agora train --resume runs/mappo-simple_spread_v3-20261121-101500 run.total_steps=5000000
  mpirun -n 4 agora train env.num_worlds=32     # data parallel: each rank steps its own worlds on its node's servers
  srun agora train env.servers_per=rank         # every rank starts its own servers instead of one set per node
  mpirun -n 4 agora train : -n 2 agora serve --bind tcp://0.0.0.0:0   # server ranks (MPMD)

On SIGTERM or SIGUSR1 (SLURM's time limit, preemption, --signal) all ranks stop after the same update, write a
checkpoint and exit with status 75; `agora train --resume RUN_DIR` continues. See docs/cluster.md.

The run directory (run.dir, default runs/<algo>-<scenario>-<time>) receives config.toml, metrics.csv,
TensorBoard events under tb/, checkpoints/ and the output of the env servers it started under servers/.
Then: agora eval RUN_DIR, agora plot RUN_DIR.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a learner (mappo, ippo, idqn, or your own: algo=FILE.py:CLASS) in agora worlds",
        description="Train a learner through agora env servers (its own, or running ones with --connect).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings, e.g. ppo.lr=3e-4 env.num_worlds=32"
    )
    parser.add_argument("--config", help="a TOML file of settings (launch/configs/ has examples)")
    parser.add_argument(
        "--connect",
        metavar="ADDR[,ADDR]",
        help="use running env servers instead of starting them (ranks share them); an entry may be a JSON connection "
        "file written by `agora serve --addr-file`",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its latest checkpoint")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=int,
        const=8765,
        metavar="PORT",
        help="serve the live page of rank 0's worlds and the learning curve on 127.0.0.1:PORT (8765; see agora watch)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agora_marl.launch.cluster import StopSignals
    from agora_marl.learners import mpi
    from agora_marl.learners.config import ConfigError
    from agora_marl.learners.run import RunDirError

    with StopSignals() as stop:
        try:
            with mpi.abort_on_exception():
                code = _train(args, mpi, stop)
        except (ConfigError, RunDirError) as exc:
            print(f"agora train: error: {exc}", file=sys.stderr)
            return 2
        mpi.release_servers()
    return code


def _train(args: argparse.Namespace, mpi, stop) -> int:
    from agora_marl.launch.cluster import EXIT_STOPPED, training_servers
    from agora_marl.launch.commands.watch import watching_run
    from agora_marl.learners.config import load_config
    from agora_marl.learners.run import Run, TrainingStopped, default_run_dir
    from agora_marl.learners.training import train

    writer = mpi.is_root()
    overrides = list(args.overrides)
    if args.watch is not None and not any(o.startswith("env.render=") for o in overrides):
        overrides.append("env.render=true")  # the page shows the learner's worlds drawn
    if args.resume:
        if args.config:
            raise SystemExit("agora train: --resume continues a run with its saved config; drop --config")
        run_dir = Run.open(args.resume, overrides, writer=writer)
    else:
        config = load_config(args.config, overrides)
        directory = mpi.broadcast_object(str(config.run.dir or default_run_dir(config)))
        config.run.dir = directory
        run_dir = Run.create(config, directory, writer=writer)
    mpi.barrier()
    config = run_dir.config
    run_dir.stop_on(stop.requested)
    connect = args.connect.split(",") if args.connect else []
    stopped = None
    try:
        with (
            training_servers(config.env, connect, run_dir.directory / "servers") as addresses,
            watching_run(addresses, run_dir.directory, args.watch, writer),
        ):
            try:
                metrics = train(config, run_dir, addresses)
            except TrainingStopped as exc:  # every rank, after the same update
                stopped = exc
    finally:
        run_dir.close()
    if stopped is not None:
        mpi.log(
            f"agora train: {_signal_name(stopped.reason)}: stopped after update {stopped.update} "
            f"(step {stopped.step}), checkpoint written; continue with: agora train --resume {run_dir.directory}"
        )
        return EXIT_STOPPED
    summary = returns_summary(metrics, run_dir.directory) if writer else ""  # metrics.csv is the writer's
    mpi.log(f"agora train: done: {run_dir.directory} ({summary})")
    return 0


def returns_summary(metrics: dict[str, float], directory) -> str:
    """The last update's returns, else the last logged ones (an update need not end an episode): what the bar showed."""
    from agora_marl.learners.run import METRICS_FILE, read_metrics

    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("return"))
    if summary:
        return summary
    path = directory / METRICS_FILE
    rows = [r for r in read_metrics(path) if r.get("return")] if path.exists() else []
    if not rows:
        return "no episode finished"
    last = rows[-1]
    returns = ", ".join(f"{k} {float(v):.4g}" for k, v in last.items() if k.startswith("return") and v)
    return f"{returns} at step {last['step']}, the last update that ended an episode"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"stop request {number}"
