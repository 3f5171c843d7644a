"""``agora eval RUN_DIR``: play a trained run's policy greedily through an env server and report its returns."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="play a trained policy for M episodes and print the mean and std of its returns",
        description="Play a run's checkpoint (greedy by default) in its scenario through an env server.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by agora train")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to play (default %(default)s)")
    parser.add_argument("--checkpoint", help="a checkpoint file (default: the run's latest)")
    parser.add_argument("--connect", metavar="ADDR[,ADDR]", help="use running env servers instead of starting one")
    parser.add_argument(
        "--seed", type=int, default=1_000_000, help="seed of the evaluation worlds (default %(default)s)"
    )
    parser.add_argument("--sample", action="store_true", help="sample actions instead of playing the greedy action")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from agora_marl.envserver.process import ServerProcesses
    from agora_marl.learners.policy import evaluate, load_run, load_trained_policy

    if args.episodes < 1:
        raise SystemExit("agora eval: --episodes must be at least 1")
    config, _ = load_run(args.run_dir, args.checkpoint)
    policy = load_trained_policy(args.run_dir, args.checkpoint)
    play = dict(episodes=args.episodes, seed=args.seed, greedy=not args.sample)
    if args.connect:
        returns = evaluate(policy, args.connect.split(","), config.env.scenario, config.env.config, **play)
    else:
        modules = [flag for module in config.env.scenario_modules for flag in ("--scenario-module", module)]
        with ServerProcesses(count=1, server_args=modules) as servers:
            returns = evaluate(policy, servers.addresses, config.env.scenario, config.env.config, **play)
    mode = "sampled" if args.sample else "greedy"
    print(
        f"{args.run_dir}: {config.algo} on {config.env.scenario}, {len(returns)} episodes ({mode}): "
        f"return mean {np.mean(returns):.2f} std {np.std(returns):.2f} (min {np.min(returns):.2f}, max {np.max(returns):.2f})"
    )
    return 0
