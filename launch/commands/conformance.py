"""``agora conformance ADDR``: check a running server against docs/protocol.md (agents/conformance)."""

from __future__ import annotations

import argparse
import json

_EPILOG = """\
examples:
  agora serve --bind tcp://127.0.0.1:5555 &
  agora conformance tcp://127.0.0.1:5555            # every check; exit status 0 only if none failed
  agora conformance /tmp/agora.json                 # a connection file (its first address, its operator secret)
  agora conformance tcp://127.0.0.1:5555 -k batch   # only the checks whose names contain "batch"
  agora conformance tcp://127.0.0.1:5555 --list     # the checks and what each one checks

Each check makes its own sessions and worlds and closes them when it ends. Checks that need what the server does not
offer (the scenario, a message limit small enough to send, the operator secret, a scenario that draws) skip.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "conformance",
        help="check a running server against the protocol (docs/protocol.md)",
        description="Run the protocol conformance suite against a running agora server (any implementation).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDR", help="the server: tcp://HOST:PORT, ipc://PATH or a connection file")
    parser.add_argument(
        "--operator",
        metavar="FILE_OR_SECRET",
        help="the operator secret (or its file) for the operator check; default: the connection file's, else the file "
        "`agora serve` wrote for ADDR, where it exists",
    )
    parser.add_argument("-k", dest="only", metavar="SUBSTRING", help="run only the checks whose names contain it")
    parser.add_argument(
        "--scenario", help="the scenario the checks create worlds of (default mpe2.simple_spread_v3:parallel_env)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="the longest wait for one reply")
    parser.add_argument("--json", action="store_true", help="print the results as JSON, one object per check")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agora_marl.agents.client import read_operator_secret
    from agora_marl.agents.conformance import DEFAULT_SCENARIO, format_report, run_conformance, select
    from agora_marl.envserver.protocol import resolve_address
    from agora_marl.envserver.protocol.connection import find_operator_secret

    checks = select(args.only)
    if args.list:
        for c in checks:
            print(f"{c.name:<20}  {c.description}")
        return 0
    if not checks:
        raise SystemExit(f"agora conformance: no check's name contains {args.only!r} (see --list)")
    try:
        address = resolve_address(args.address)
        operator = read_operator_secret(args.operator) if args.operator else find_operator_secret(args.address)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"agora conformance: {exc}") from None
    results = run_conformance(
        address, operator=operator, scenario=args.scenario or DEFAULT_SCENARIO, only=args.only, timeout_s=args.timeout
    )
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        print(format_report(results, address))
    return 1 if any(r.failed for r in results) else 0
