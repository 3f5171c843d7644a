"""``agora worlds``: the table of ``agora watch``, printed once in the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from agora_marl.launch.commands.watch import add_server_arguments, targets_of


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "worlds",
        help="print the worlds of running servers: seats, holders, ticks, steps/s, returns",
        description="List a server's worlds (every world with operator rights) as a table, or as JSON rows.",
    )
    add_server_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON, one list")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for each server")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agora_marl.agents.client import AgentClient, ServerError
    from agora_marl.agents.watch import format_table, world_row

    targets = targets_of(args)
    rows, failed = [], 0
    for index, target in enumerate(targets):
        try:
            with AgentClient(
                target.address, timeout_s=args.timeout, name="agora-worlds", operator=target.operator
            ) as c:
                rows += [world_row(entry, index) for entry in c.list_worlds()]
                if not (c.welcome or {}).get("operator"):
                    print(
                        f"agora worlds: {target.address}: not an operator, so only the worlds this client may see "
                        "(give --operator, or run where `agora serve` wrote its operator file)",
                        file=sys.stderr,
                    )
        except (TimeoutError, ServerError) as exc:
            print(f"agora worlds: {target.address}: {exc}", file=sys.stderr)
            failed += 1
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows, [t.address for t in targets]))
    return 1 if failed else 0
