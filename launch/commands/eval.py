"""``agora eval RUN_DIR``: play a trained run's policy greedily through an env server and report its returns, next to
baselines (random, noop, scripted) played in the same worlds with the same seeds; with ``--opponent``, a match: the
run plays its seats and each opponent the others, and both sides' returns (and win rates) are reported."""

from __future__ import annotations

import argparse
import json
from typing import Any

_EPILOG = """\
examples:
  agora eval runs/mappo-simple_spread_v3-20261121-101500 --episodes 100
  agora eval RUN_DIR --baselines                 # the trained policy, then random, noop and scripted where there is one
  agora eval RUN_DIR --policy trained --policy random --policy my_policies.py:make
  agora eval runs/predators --opponent random --opponent runs/prey     # a run that trained env.seats=predator_*
  agora eval runs/both-teams --seats 'predator_*' --opponent random --baselines --json

A policy is trained (the run's checkpoint), random, noop, scripted (simple_spread, predator_prey, coin_duel),
MODULE:CALLABLE (called with an agent's observation and action spaces, it returns a callable obs -> action) or
another run directory. Every policy plays the same episodes: the worlds are seeded --seed for each.

--opponent (repeatable) plays a match per opponent: the run's policy in the seats it trained (env.seats; --seats
GLOB when it trained every seat), the opponent in the others, both sides' returns in one table, and each side's
win rate where the scenario's infos name a winner (predator_prey_v0) or the sides mirror each other (coin_duel_v0:
the higher return wins). A run that trained some seats plays the opponent it trained against when none is given.
--policy and --baselines then choose what plays the run's seats.
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
    parser.add_argument(
        "--opponent",
        action="append",
        dest="opponents",
        metavar="SPEC",
        help="random|noop|scripted|MODULE:CALLABLE|RUN_DIR in the seats the run did not train (repeatable)",
    )
    parser.add_argument("--seats", metavar="GLOB[,GLOB]", help="the seats the run plays against --opponent")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agora_marl.agents.policies import has_scripted_policy
    from agora_marl.envserver.process import ServerProcesses
    from agora_marl.launch.matches import trained_run

    if args.episodes < 1:
        raise SystemExit("agora eval: --episodes must be at least 1")
    try:
        run_ = trained_run(args.run_dir, args.checkpoint)
    except (ValueError, FileNotFoundError) as exc:  # not a run, a checkpoint of another format, a moved algorithm
        raise SystemExit(f"agora eval: {exc}") from None
    config = run_.config
    opponents = list(dict.fromkeys(args.opponents or ([config.env.opponent] if run_.partial else [])))
    if args.seats and not opponents:
        raise SystemExit("agora eval: --seats says which side the run plays against an --opponent: give one")
    names = list(dict.fromkeys(args.policies or ["trained"]))
    if args.baselines:
        extra = ["random", "noop"] + (["scripted"] if has_scripted_policy(config.env.scenario) else [])
        names += [n for n in extra if n not in names]
    evaluate = _matches(args, run_, names, opponents) if opponents else _whole_worlds(args, run_, names)
    if args.connect:
        evaluate(args.connect.split(","))
    else:
        modules = [flag for module in config.env.scenario_modules for flag in ("--scenario-module", module)]
        with ServerProcesses(count=1, server_args=modules) as servers:
            evaluate(servers.addresses)
    return 0


def _whole_worlds(args: argparse.Namespace, run_, names: list[str]):
    """Each policy in every seat of the worlds, one line each (or JSON)."""
    import numpy as np

    from agora_marl.launch.matches import side_policy
    from agora_marl.learners.trained import evaluate

    config, spec = run_.config, run_.spec
    policies = {}
    for name in names:
        try:
            policies[name] = side_policy(name, list(spec.possible_agents), spec, args.seed, run_)
        except ValueError as exc:
            raise SystemExit(f"agora eval: policy {name!r}: {exc}") from None
    play = dict(episodes=args.episodes, seed=args.seed, greedy=not args.sample)
    mode = "sampled" if args.sample else "greedy"
    if not args.json:
        print(
            f"{args.run_dir}: {config.algorithm.name} on {config.env.scenario}, {args.episodes} episodes per policy "
            f"(trained: {mode}), worlds seeded {args.seed}",
            flush=True,
        )
    width = max(len(n) for n in names)

    def evaluate_all(addresses: list[str]) -> None:
        rows = []
        for name, policy in policies.items():
            returns = evaluate(policy, addresses, config.env.scenario, config.env.config, **play)
            rows.append({"policy": name, "return": _stats(returns, extremes=True)})
            if not args.json:
                print(
                    f"  {name:<{width}}  return {np.mean(returns):.2f} ± {np.std(returns):.2f} (mean ± std over "
                    f"{len(returns)} episodes; min {np.min(returns):.2f}, max {np.max(returns):.2f})",
                    flush=True,
                )
        if args.json:
            print(json.dumps({**_header(args, run_, mode), "policies": rows}, indent=2))

    return evaluate_all


def _matches(args: argparse.Namespace, run_, names: list[str], opponents: list[str]):
    """A match per (policy in the run's seats, opponent in the others): a table of both sides (or JSON)."""
    from agora_marl.agents.match import Side, play_match
    from agora_marl.launch.matches import run_side, seats_label, side_policy

    config, spec = run_.config, run_.spec
    agents = list(spec.possible_agents)
    try:
        seats = run_side(run_, args.seats)
    except ValueError as exc:
        raise SystemExit(f"agora eval: {exc}") from None
    others = [a for a in agents if a not in seats]
    if not others:
        raise SystemExit(
            f"agora eval: {args.run_dir} plays every seat ({', '.join(seats)}): no seat is left to an opponent"
        )

    def policy(name: str, chosen: list[str]) -> Any:
        # Built anew for every match, so that each starts from the same seeds (random draws its numbers from them).
        try:
            return side_policy(name, chosen, spec, args.seed, run_)
        except ValueError as exc:
            hint = "" if args.opponents or name in names else "; it is the run's env.opponent: give --opponent SPEC"
            raise SystemExit(f"agora eval: {name!r} for {', '.join(chosen)}: {exc}{hint}") from None

    for name, chosen in [(n, seats) for n in names] + [(o, others) for o in opponents]:
        policy(name, chosen)  # every name is checked before the first match
    mode = "sampled" if args.sample else "greedy"
    mine, theirs = seats_label(seats, agents), seats_label(others, agents)
    columns = [f"{mine} return", f"{theirs} return", f"{mine} wins", f"{theirs} wins"]
    widths = [max(len(n) for n in names + ["policy"]), max(len(o) for o in opponents + ["opponent"])]
    widths += [max(15, len(c)) for c in columns]
    if not args.json:
        print(
            f"{args.run_dir}: {config.algorithm.name} on {config.env.scenario}, {args.episodes} episodes per match "
            f"(trained: {mode}), worlds seeded {args.seed}; the run's side plays {', '.join(seats)}, "
            f"the opponent {', '.join(others)}" + ("" if args.opponents else " (env.opponent, as it trained)"),
            flush=True,
        )
        print(_line(["policy", "opponent", *columns], widths))

    def play_all(addresses: list[str]) -> None:
        rows = []
        for name in names:
            for opponent in opponents:
                sides = [
                    Side(seats, policy(name, seats), greedy=not args.sample),
                    Side(others, policy(opponent, others)),
                ]
                played = play_match(
                    addresses, config.env.scenario, config.env.config, sides, args.episodes, seed=args.seed
                )
                rates = played.win_rates()
                row = {
                    "policy": name,
                    "opponent": opponent,
                    "return": _stats(played.returns[:, 0]),
                    "opponent_return": _stats(played.returns[:, 1]),
                    "win_rate": None if rates is None else rates[0],
                    "opponent_win_rate": None if rates is None else rates[1],
                    "winners_from": played.decided_by or None,
                }
                rows.append(row)
                if not args.json:
                    cells = [name, opponent, _mean_std(row["return"]), _mean_std(row["opponent_return"])]
                    cells += [
                        "-" if r is None else f"{100 * r:.0f}%" for r in (row["win_rate"], row["opponent_win_rate"])
                    ]
                    print(_line(cells, widths), flush=True)
        if args.json:
            header = {**_header(args, run_, mode), "seats": seats, "opponent_seats": others}
            print(json.dumps({**header, "matches": rows}, indent=2))

    return play_all


def _line(cells: list[str], widths: list[int]) -> str:
    return "  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()


def _header(args: argparse.Namespace, run_, mode: str) -> dict[str, Any]:
    config = run_.config
    return {
        "run": str(args.run_dir),
        "algo": config.algorithm.name,
        "algo_reference": config.algo,
        "scenario": config.env.scenario,
        "episodes": args.episodes,
        "seed": args.seed,
        "trained": mode,
    }


def _stats(returns, extremes: bool = False) -> dict[str, float]:
    import numpy as np

    out = {"mean": float(np.mean(returns)), "std": float(np.std(returns))}
    if extremes:
        out.update(min=float(np.min(returns)), max=float(np.max(returns)))
    return out


def _mean_std(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"
