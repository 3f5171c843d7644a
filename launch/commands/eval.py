"""``agora eval RUN_DIR``: play a trained run's policy greedily through an env server and report its returns, next to
baselines (random, noop, scripted) played in the same worlds with the same seeds."""

from __future__ import annotations

import argparse
from typing import Any

_EPILOG = """\
examples:
  agora eval runs/mappo-simple_spread_v3-20261121-101500 --episodes 100
  agora eval RUN_DIR --baselines                 # the trained policy, then random, noop and scripted where there is one
  agora eval RUN_DIR --policy trained --policy random --policy my_policies.py:make

A policy is trained (the run's checkpoint), random, noop, scripted (simple_spread), MODULE:CALLABLE (called with
an agent's observation and action spaces, it returns a callable obs -> action) or another run directory. Every
policy plays the same episodes: the worlds are seeded --seed for each.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="play a trained policy (and baselines) for M episodes and print the mean and std of the returns",
        description="Play a run's checkpoint (greedy by default) in its scenario through an env server, and baselines.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by agora train")
    parser.add_argument("--episodes", type=int, default=100, help="episodes to play per policy (default %(default)s)")
    parser.add_argument("--checkpoint", help="a checkpoint file (default: the run's latest)")
    parser.add_argument("--connect", metavar="ADDR[,ADDR]", help="use running env servers instead of starting one")
    parser.add_argument(
        "--seed", type=int, default=1_000_000, help="seed of the evaluation worlds (default %(default)s)"
    )
    parser.add_argument("--sample", action="store_true", help="sample actions instead of playing the greedy action")
    parser.add_argument(
        "--policy",
        action="append",
        dest="policies",
        metavar="POLICY",
        help="trained|random|noop|scripted|MODULE:CALLABLE|RUN_DIR (repeatable; default trained)",
    )
    parser.add_argument(
        "--baselines", action="store_true", help="also play random, noop, and scripted where the scenario has one"
    )
    parser.set_defaults(func=run)


class SeatPolicies:
    """Per-agent policies ``obs -> action`` acting in K worlds at once, as ``evaluate`` wants a policy to act."""

    def __init__(self, policies: dict[str, Any]):
        self.policies = policies

    def act(self, obs: dict[str, Any], greedy: bool = True) -> dict[str, Any]:
        import numpy as np

        return {a: np.stack([self.policies[a](o) for o in values]) for a, values in obs.items()}


def _baseline(name: str, spec, seed: int) -> SeatPolicies:
    from agora_marl.agents.policies import random_policy
    from agora_marl.launch.policies import seat_policy

    policies = {}
    for i, agent in enumerate(spec.possible_agents):
        obs_space, act_space = spec.observation_spaces[agent], spec.action_spaces[agent]
        if name == "random":  # seeded: the same numbers each evaluation
            policies[agent] = random_policy(obs_space, act_space, seed=seed + i)
        else:
            policies[agent] = seat_policy(name, obs_space, act_space, agent)
    return SeatPolicies(policies)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from agora_marl.agents.policies import has_scripted_policy
    from agora_marl.envserver.process import ServerProcesses
    from agora_marl.envserver.protocol import WorldSpec
    from agora_marl.learners.policy import evaluate, load_run, load_trained_policy

    if args.episodes < 1:
        raise SystemExit("agora eval: --episodes must be at least 1")
    config, state = load_run(args.run_dir, args.checkpoint)
    spec = WorldSpec.from_wire(state["spec"])
    names = list(dict.fromkeys(args.policies or ["trained"]))
    if args.baselines:
        extra = ["random", "noop"] + (["scripted"] if has_scripted_policy(config.env.scenario) else [])
        names += [n for n in extra if n not in names]
    policies = {}
    for name in names:
        try:
            if name == "trained":
                policies[name] = load_trained_policy(args.run_dir, args.checkpoint)
            else:
                policies[name] = _baseline(name, spec, args.seed)
        except ValueError as exc:
            raise SystemExit(f"agora eval: policy {name!r}: {exc}") from None
    play = dict(episodes=args.episodes, seed=args.seed, greedy=not args.sample)
    mode = "sampled" if args.sample else "greedy"
    print(
        f"{args.run_dir}: {config.algo} on {config.env.scenario}, {args.episodes} episodes per policy "
        f"(trained: {mode}), worlds seeded {args.seed}",
        flush=True,
    )
    width = max(len(n) for n in names)

    def evaluate_all(addresses: list[str]) -> None:
        for name, policy in policies.items():
            returns = evaluate(policy, addresses, config.env.scenario, config.env.config, **play)
            print(
                f"  {name:<{width}}  return {np.mean(returns):.2f} ± {np.std(returns):.2f} (mean ± std over "
                f"{len(returns)} episodes; min {np.min(returns):.2f}, max {np.max(returns):.2f})",
                flush=True,
            )

    if args.connect:
        evaluate_all(args.connect.split(","))
    else:
        modules = [flag for module in config.env.scenario_modules for flag in ("--scenario-module", module)]
        with ServerProcesses(count=1, server_args=modules) as servers:
            evaluate_all(servers.addresses)
    return 0
