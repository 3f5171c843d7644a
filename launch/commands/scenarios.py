"""``agora scenarios list|check|new``: see the worlds a server can host, check one, start a new one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_EPILOG = """\
examples:
  agora scenarios list
  agora scenarios check foraging_v0
  agora scenarios check mpe2.simple_spread_v3:parallel_env --config N=4 --no-wire
  agora scenarios new my_world                   # writes ./my_world.py, registering my_world_v0
  agora scenarios check my_world_v0 --module ./my_world.py

Besides registered names, a server hosts MODULE:CALLABLE (a PettingZoo parallel_env/env/raw_env constructor in an
allowed package, e.g. mpe2.simple_tag_v3:parallel_env) and gymnasium:ENV_ID (one seat, e.g. gymnasium:CartPole-v1).
Your own scenarios register when their module or file is imported: `agora serve --scenario-module ./my_world.py`.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "scenarios",
        help="list, check and author scenarios",
        description="See the scenarios a server can host, check one, or start a new one from a template.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="registered scenarios: agents, spaces, description")
    _add_module(listing)
    listing.set_defaults(func=run_list)

    check = actions.add_parser("check", help="PettingZoo's checkers, determinism, vector form and the wire; step rates")
    check.add_argument("name", help="registered name, MODULE:CALLABLE or gymnasium:ENV_ID")
    add_config(check)
    _add_module(check)
    check.add_argument("--seed", type=int, default=0, help="seed of the seeded checks (default %(default)s)")
    check.add_argument("--steps", type=int, default=300, help="steps per trajectory check (default %(default)s)")
    check.add_argument("--seconds", type=float, default=1.0, help="time per step-rate measure (default %(default)s)")
    check.add_argument("--batch", type=int, default=256, help="K for the batched step rates (default %(default)s)")
    check.add_argument("--no-wire", action="store_true", help="skip the over-the-wire check and served rates")
    check.add_argument("--allow", action="append", default=[], metavar="PKG", help="also allow PKG's constructors")
    check.set_defaults(func=run_check)

    new = actions.add_parser("new", help="write a documented template scenario that passes the check")
    new.add_argument("name", help="lower-case identifier, optionally versioned: my_world or my_world_v0")
    new.add_argument("--dir", default=".", help="where to write NAME.py (default: the current directory)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=run_new)


def add_config(parser: argparse.ArgumentParser) -> None:
    """``--config KEY=VALUE`` (repeatable; the value parsed as JSON when it is JSON)."""
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="scenario config (value as JSON)"
    )


def _add_module(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE|FILE.py",
        help="import your scenarios' module (or file) first so that they register (repeatable)",
    )


def parse_config(values: list[str]) -> dict:
    """``["N=4", "name=x"]`` -> ``{"N": 4, "name": "x"}``."""
    config = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"--config {value!r} must be KEY=VALUE")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    return config


def load_modules(modules: list[str]) -> None:
    """Import the user's scenario modules, turning a failure into a clear exit."""
    from agora_marl.scenarios.registry import load_scenario_module

    for module in modules:
        try:
            load_scenario_module(module)
        except (ImportError, FileNotFoundError) as exc:
            raise SystemExit(f"cannot import scenario module {module!r}: {exc}") from None


def _space(space) -> str:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return f"Box{tuple(space.shape)}".replace(",)", ")")
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    return type(space).__name__


def _teams(env) -> list[tuple[str, list[str]]]:
    """Agents grouped by name prefix (``predator_0`` -> ``predator``), in order."""
    teams: dict[str, list[str]] = {}
    for agent in env.possible_agents:
        teams.setdefault(str(agent).rsplit("_", 1)[0], []).append(agent)
    return list(teams.items())


def run_list(args: argparse.Namespace) -> int:
    from agora_marl.scenarios.registry import make_env, registered

    load_modules(args.module)
    rows = []
    for name, entry in sorted(registered().items()):
        try:
            env = make_env(name)
        except Exception as exc:
            rows.append((name, "?", f"cannot build: {exc}", entry.description))
            continue
        teams = _teams(env)
        agents = " + ".join(f"{len(members)} {team}" for team, members in teams)
        spaces = "; ".join(
            f"{_space(env.observation_space(m[0]))} -> {_space(env.action_space(m[0]))}" for _, m in teams
        )
        vector = " [vectorised]" if entry.vector_factory is not None else ""
        rows.append((name, agents, spaces, entry.description + vector))
        env.close()
    headers = ("name", "agents", "observation -> action", "description")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(3)]
    for row in [headers, *rows]:
        print("  ".join([*(str(cell).ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]))
    print(
        "\nAlso hostable: MODULE:CALLABLE, a PettingZoo parallel_env/env/raw_env in an allowed package "
        "(mpe2.simple_spread_v3:parallel_env),\nand gymnasium:ENV_ID as a one-seat world (gymnasium:CartPole-v1). "
        "Register your own with `agora scenarios new NAME`."
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from agora_marl.launch.scenario_wire import check_everything
    from agora_marl.scenarios.check import CheckSettings
    from agora_marl.scenarios.rates import RateSettings
    from agora_marl.scenarios.registry import DEFAULT_ALLOWED_PACKAGES

    load_modules(args.module)
    settings = CheckSettings(
        config=parse_config(args.config),
        seed=args.seed,
        steps=args.steps,
        allowed_packages=(*DEFAULT_ALLOWED_PACKAGES, *args.allow),
    )
    rates = RateSettings(seconds=args.seconds, batch_worlds=args.batch)
    report = check_everything(args.name, settings, rates, wire=not args.no_wire)
    print(report.table())
    return 0 if report.ok else 1


def run_new(args: argparse.Namespace) -> int:
    from agora_marl.scenarios.new import write_scenario_template

    try:
        path, name = write_scenario_template(args.name, args.dir, force=args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"agora scenarios new: {exc}", file=sys.stderr)
        return 2
    # A path with a directory part, so that every command reads it as a file (no PYTHONPATH, no module lookup).
    shown = path if path.is_absolute() or path.parent != Path() else f"./{path}"
    print(f"wrote {path}: the scenario {name}")
    print("next:")
    print(f"  agora scenarios check {name} --module {shown}")
    print(f"  agora record --scenario {name} --module {shown} --policy random --out {name}.gif")
    print(f"  agora serve --scenario-module {shown}")
    return 0
