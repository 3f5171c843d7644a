"""``agora learners``: list the algorithms ``algo=`` can name, write a new one from a template, check one against
the learner API's contract (learners/check.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
examples:
  agora learners list                           # built-ins and installed ones (entry points of agora.learners)
  agora learners new my_a2c                     # writes ./my_a2c.py: an actor-critic that trains as it is
  agora train algo=./my_a2c.py:MyA2c            # train it; the run remembers where the file is
  agora learners check ./my_a2c.py:MyA2c        # the contract: train, exact resume, partial seats, self-play,
                                                #   eval and play in fresh processes, mpirun -n 2 in sync
  agora learners check mappo ppo.epochs=1       # key=value settings for every check run

An algorithm is a class (docs/learners.md, 'Writing a learner'); algo= names it as a built-in name, MODULE:CLASS,
path/to/file.py:CLASS, or the name of an installed entry point of the group agora.learners.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "learners",
        help="list, check and author learning algorithms",
        description="See the algorithms algo= can name, check one against the learner API, or start a new one.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="the built-in and installed algorithms and what each declares")
    listing.set_defaults(func=run_list)

    check = actions.add_parser("check", help="run the learner API's contract on an algorithm (a line per check)")
    check.add_argument("algo", help="a built-in name, MODULE:CLASS, path/to/file.py:CLASS or an entry point")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="settings of every check run")
    check.add_argument(
        "--no-processes", action="store_true", help="skip the checks in fresh processes (eval, play, mpirun -n 2)"
    )
    check.add_argument("--keep", metavar="DIR", help="keep the check's run directories in DIR")
    check.add_argument("--traceback", action="store_true", help="print the traceback of a check the algorithm failed")
    check.set_defaults(func=run_check)

    new = actions.add_parser("new", help="write a one-file algorithm (an actor-critic) that trains out of the box")
    new.add_argument("name", help="lower-case identifier: my_a2c (the file NAME.py, the TOML table [NAME])")
    new.add_argument("--dir", default=".", help="where to write NAME.py (default: the current directory)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=run_new)


def run_list(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    from agora_marl.learners.registry import BUILTIN, ENTRY_POINT_GROUP, AlgorithmError, resolve

    names = [*BUILTIN, *sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN)]
    for name in names:
        try:
            cls, _ = resolve(name)
        except AlgorithmError as exc:
            print(f"{name:<10} cannot be loaded: {exc}")
            continue
        flags = [f for f, on in (("partial seats", cls.partial_seats), ("self-play", cls.self_play)) if on]
        kind = "on-policy" if cls.on_policy else "off-policy"
        where = "built-in" if name in BUILTIN else f"{cls.__module__} (installed)"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(
            f"{name:<10} {where}; [{cls.settings_table()}], actions {', '.join(sorted(cls.actions))}, state {cls.state}, "
            f"{kind}{''.join(', ' + f for f in flags)}"
        )
        if doc:
            print(f"{'':<10} {doc}")
    print("\nyour own: algo=path/to/file.py:CLASS or MODULE:CLASS (agora learners new NAME writes one)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from agora_marl.learners.check import check_algorithm
    from agora_marl.learners.config import ConfigError

    print(f"agora learners check {args.algo}", flush=True)
    try:
        report = check_algorithm(
            args.algo,
            args.overrides,
            out=lambda line: print(line, flush=True),
            processes=not args.no_processes,
            keep=Path(args.keep) if args.keep else None,
        )
    except ConfigError as exc:
        print(f"agora learners check: error: {exc}", file=sys.stderr)
        return 2
    bad = [r.check for r in report.rows if r.status == "FAIL"]
    if report.traceback and args.traceback:
        print(report.traceback, file=sys.stderr)
    passed = sum(r.status == "ok" for r in report.rows)
    summary = f"{passed} of {len(report.rows)} checks passed" + (f"; failed: {', '.join(bad)}" if bad else "")
    print(summary + ("" if report.ok else " (the first failure stops the checks that build on it)"))
    return 0 if report.ok else 1


def run_new(args: argparse.Namespace) -> int:
    from agora_marl.learners.new import write_algorithm_template

    try:
        path, class_name = write_algorithm_template(args.name, args.dir, force=args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"agora learners new: {exc}", file=sys.stderr)
        return 2
    # A path with a directory part, so that algo= reads it as a file (no PYTHONPATH, no module lookup).
    shown = path if path.is_absolute() or path.parent != Path() else f"./{path}"
    print(f"wrote {path}: the algorithm {args.name} (class {class_name}, settings table [{args.name}])")
    print("next:")
    print(f"  agora train algo={shown}:{class_name} run.total_steps=200000")
    print(f"  agora learners check {shown}:{class_name}")
    print("  agora eval RUN_DIR; agora train --resume RUN_DIR; mpirun -n 2 agora train algo=...")
    return 0
