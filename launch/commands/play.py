"""``agora play``: join a world as a custom client and play a policy in its seats, printing each episode's return."""

from __future__ import annotations

import argparse
import json
import sys

_EPILOG = """\
examples:
  agora play --connect tcp://127.0.0.1:5555 --scenario mpe2.simple_spread_v3:parallel_env --policy scripted --episodes 5
  agora play --connect tcp://127.0.0.1:5555 --world 1 --seat agent_1 --policy random
  agora play --connect /tmp/agora.json --world 1 --seat agent_1 --token TOKEN     # reclaim a seat held before
  agora play --connect tcp://127.0.0.1:5555 --world 1 --policy my_pkg.policies:make_policy

  # two players in one world: the creator waits (up to 300 s) until someone takes the other seats
  agora play --connect tcp://127.0.0.1:5555 --scenario foraging_v0 --seat agent_0 --wait-for-seats --episodes 2
  agora play --connect tcp://127.0.0.1:5555 --world 1 --seat agent_1 --episodes 2     # in another terminal

  # some seats of K shared worlds (a learner holds the others), one act_batch per tick
  agora play --connect tcp://127.0.0.1:5555 --worlds 3,4,5 --seats "prey_*" --policy random --seconds 60

  # the same, finding the worlds by the name their owner gave them (agora train env.group=tag-league ...)
  agora play --connect tcp://127.0.0.1:5555 --group tag-league --seats "prey_*" --policy scripted

A policy is random, noop, scripted (simple_spread), MODULE:CALLABLE (called with the observation and action
spaces, it returns a callable obs -> action; MODULE is found on sys.path, then in the current directory, or is a
FILE.py, as --module's scenarios are) or a training run directory.

Without --wait-for-seats, a created world starts at once and the seats nobody plays get the --fill action.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "play",
        help="join a world as a client and play a policy in a seat",
        description="Play a policy in seats of a world on an agora server, as a custom client.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--connect", default="tcp://127.0.0.1:5555", help="server address or connection file (default %(default)s)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--world", type=int, help="join this world (see `list` on the server)")
    target.add_argument("--scenario", help="create a world of this scenario and play its seats")
    target.add_argument(
        "--worlds", metavar="W1,W2,...", help="play --seats of these worlds of one spec, one act_batch per tick"
    )
    target.add_argument(
        "--group", metavar="NAME", help="play --seats of every world of this named group, one act_batch per tick"
    )
    parser.add_argument(
        "--invite-token", metavar="TOKEN", help="with --group: the owner's invitation to invitation-only seats"
    )
    parser.add_argument(
        "--seat",
        "--seats",
        action="append",
        dest="seats",
        metavar="AGENT",
        help="a seat to play (repeatable; default every free seat)",
    )
    parser.add_argument(
        "--token", action="append", default=[], metavar="[AGENT=]TOKEN", help="reclaim a seat with its token"
    )
    parser.add_argument("--policy", default="random", help="random|noop|scripted|MODULE:CALLABLE|RUN_DIR")
    parser.add_argument("--episodes", type=int, help="stop after N episodes (default: until Ctrl-C)")
    parser.add_argument("--steps", type=int, help="with --worlds or --group: stop after N ticks")
    parser.add_argument("--seconds", type=float, help="with --worlds or --group: stop after this long")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="scenario config (value as JSON)"
    )
    parser.add_argument("--seed", type=int, help="seed of a created world")
    parser.add_argument("--fill", default="noop", choices=("noop", "random", "repeat"), help="unheld seats' action")
    parser.add_argument("--deadline-ms", type=int, help="lockstep deadline of a created world")
    parser.add_argument(
        "--wait-for-seats",
        nargs="?",
        type=float,
        const=300.0,
        metavar="SECONDS",
        help="start only when every seat of the world is taken, waiting at most SECONDS (300) for the other players",
    )
    parser.add_argument(
        "--server-key", metavar="KEY|FILE", help="the server's CurveZMQ public key, its NAME.key file, or a file of it"
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        help="this client's NAME.key_secret (agora keys new), for a server that lets in only listed clients",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply (default %(default)s)")
    parser.set_defaults(func=run)


def _tokens(values: list[str], seats: list[str] | None) -> dict[str, str]:
    tokens = {}
    for value in values:
        seat, sep, token = value.partition("=")
        if not sep:
            if not seats or len(seats) != 1:
                raise SystemExit("agora play: --token TOKEN needs exactly one --seat (or write --token AGENT=TOKEN)")
            seat, token = seats[0], value
        tokens[seat] = token
    return tokens


def _config(values: list[str]) -> dict:
    config = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep:
            raise SystemExit(f"agora play: --config {value!r} must be KEY=VALUE")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    return config


def _run_worlds(args: argparse.Namespace) -> int:
    """``--worlds``: agents/opponents.py plays the policy in ``--seats`` of every world, one act_batch per tick."""
    import numpy as np

    from agora_marl.agents.client import ServerError
    from agora_marl.agents.opponents import play_seats
    from agora_marl.envserver.protocol import resolve_address
    from agora_marl.launch.policies import load_run_policy

    which = "--group" if args.group is not None else "--worlds"
    if not args.seats:
        raise SystemExit(f"agora play: {which} needs --seats (agents or globs, e.g. --seats 'prey_*')")
    try:
        worlds = [int(w) for w in (args.worlds or "").split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"agora play: --worlds {args.worlds!r} must be world ids, comma-separated") from None
    seats = [s for value in args.seats for s in value.split(",") if s]
    try:
        played = play_seats(
            resolve_address(args.connect),
            worlds,
            seats,
            args.policy,
            steps=args.steps,
            seconds=args.seconds,
            timeout_s=args.timeout,
            server_key=args.server_key,
            client_key=args.client_key,
            run_loader=load_run_policy,
            group=args.group,
            invite_token=args.invite_token,
        )
    except (ServerError, ValueError) as exc:
        print(f"agora play: error: {exc}", file=sys.stderr)
        return 1
    worlds = played.worlds
    print(f"{played.steps} ticks of {len(worlds)} worlds, {played.episodes} episodes ({played.reason})", flush=True)
    for world, returns in zip(worlds, played.world_returns, strict=True):
        if returns:
            spread = f"{np.mean(returns):.2f} ± {np.std(returns):.2f} (mean ± std over {len(returns)} episodes)"
        else:
            spread = "no episode ended"
        print(f"world {world}: return {spread}", flush=True)
    print(f"other seats filled late: {played.others_late} of {played.others_seat_ticks} seat-ticks", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from agora_marl.launch.policies import load_run_first

    try:  # a run's policy before any seat is taken (see load_run_first)
        load_run_first(args.policy)
    except (FileNotFoundError, ValueError) as exc:
        print(f"agora play: error: --policy {args.policy}: {exc}", file=sys.stderr)
        return 1
    if args.worlds is not None or args.group is not None:
        return _run_worlds(args)

    from agora_marl.agents.play import PlayError, PlaySettings, play
    from agora_marl.launch.policies import load_run_policy

    settings = PlaySettings(
        connect=args.connect,
        world=args.world,
        scenario=args.scenario,
        config=_config(args.config),
        seats=args.seats,
        tokens=_tokens(args.token, args.seats),
        policy=args.policy,
        episodes=args.episodes,
        seed=args.seed,
        fill=args.fill,
        deadline_ms=args.deadline_ms,
        wait_for_seats=args.wait_for_seats,
        timeout_s=args.timeout,
        server_key=args.server_key,
        client_key=args.client_key,
    )
    try:
        returns = play(settings, out=lambda line: print(line, flush=True), run_loader=load_run_policy)
    except PlayError as exc:
        print(f"agora play: error: {exc}", file=sys.stderr)
        return 1
    if returns:
        spread = f"{np.mean(returns):.2f} ± {np.std(returns):.2f} (mean ± std over {len(returns)} episodes)"
        print(f"{len(returns)} episodes: return {spread}", flush=True)
    return 0
