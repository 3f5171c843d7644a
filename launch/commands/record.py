"""``agora record``: play episodes of a scenario in process with given policies and save them as an animated GIF; with
a run directory, a match: the run's policy in its seats, an opponent (another run's, or a named policy) in the
others."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agora_marl.launch.commands.scenarios import add_config, load_modules, parse_config

_EPILOG = """\
examples:
  agora record --scenario foraging_v0 --out foraging.gif
  agora record --scenario predator_prey_v0 --policy runs/mappo-predator_prey_v0-... --agent-policy prey=random
  agora record --scenario mpe2.simple_spread_v3:parallel_env --policy scripted --episodes 2 --out spread.gif
  agora record --scenario my_world_v0 --module ./my_world.py --policy my_pkg.policies:make_policy
  agora record runs/predators --opponent runs/prey --episodes 3 --out match.gif
  agora record runs/both-teams --seats 'predator_*' --opponent random

A policy is random, noop, scripted (simple_spread), MODULE:CALLABLE (called with the observation and action spaces,
it returns a callable obs -> action) or a training run directory (each agent plays its trained network).
--agent-policy NAME=POLICY gives one agent (predator_1) or a team (every agent named prey_*) its own policy.

With RUN_DIR the scenario and its config are the run's (--config changes them), the run plays the seats it trained
(env.seats; --seats GLOB when it trained every seat) and --opponent the others (default: the opponent it trained
against; a run that trained every seat and no --opponent plays them all). An opponent run plays the seats it trained
among those; seats that both runs trained are the first run's, and seats that neither plays need --agent-policy.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "record",
        help="render episodes played by given policies into a GIF",
        description="Play episodes of a scenario in this process and save the rgb_array frames as an animated GIF.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory: its policy in its seats")
    parser.add_argument("--scenario", help="registered name, MODULE:CALLABLE or gymnasium:ENV_ID (or RUN_DIR's)")
    add_config(parser)
    parser.add_argument(
        "--module", action="append", default=[], metavar="MODULE|FILE.py", help="import your scenarios' module first"
    )
    parser.add_argument("--policy", default="random", help="every agent's policy (default %(default)s)")
    parser.add_argument(
        "--agent-policy", action="append", default=[], metavar="NAME=POLICY", help="an agent's or a team's policy"
    )
    parser.add_argument(
        "--opponent",
        metavar="SPEC",
        help="with RUN_DIR: random|noop|scripted|MODULE:CALLABLE|RUN_DIR in the other seats",
    )
    parser.add_argument("--seats", metavar="GLOB[,GLOB]", help="with RUN_DIR: the seats the run plays")
    parser.add_argument("--episodes", type=int, default=1, help="episodes to record (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=1000, help="at most this many steps in all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (default %(default)s)")
    parser.add_argument("--fps", type=float, help="frames per second (default: the scenario's render_fps)")
    parser.add_argument("--out", default="episode.gif", help="the GIF to write (default %(default)s)")
    parser.set_defaults(func=run)


def policies_for(env, default: str, overrides: dict[str, str], seed: int) -> dict[str, Callable[[Any], Any]]:
    """One policy per agent: ``overrides`` by agent name or team prefix, else ``default``."""
    from agora_marl.agents.policies import random_policy
    from agora_marl.launch.matches import team_of
    from agora_marl.launch.policies import seat_policy

    out = {}
    for i, agent in enumerate(env.possible_agents):
        team = team_of(agent)
        spec = overrides.get(agent, overrides.get(team, default))
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        if spec == "random":  # seeded, so that a recording can be made again
            out[agent] = random_policy(obs_space, act_space, seed=seed + i)
        else:
            out[agent] = seat_policy(spec, obs_space, act_space, agent)
    unknown = set(overrides) - set(env.possible_agents) - {team_of(a) for a in env.possible_agents}
    if unknown:
        raise ValueError(f"--agent-policy names no agent or team: {sorted(unknown)} (agents: {env.possible_agents})")
    return out


def record(
    env, policies: dict[str, Callable[[Any], Any]], episodes: int, max_steps: int, seed: int
) -> tuple[list, list[dict[str, float]], list[Any]]:
    """Play ``episodes`` episodes (at most ``max_steps`` steps in all); return the frames, each episode's returns,
    and each episode's winner as its last step's infos name it (``info["winner"]``; None where none does)."""
    frames, returns, winners = [], [], []
    steps = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        frames.append(env.render())
        totals = dict.fromkeys(env.possible_agents, 0.0)
        infos: dict = {}
        while env.agents and steps < max_steps:
            obs, rewards, _, _, infos = env.step({a: policies[a](obs[a]) for a in env.agents})
            for agent, reward in rewards.items():
                totals[agent] += float(reward)
            frames.append(env.render())
            steps += 1
        returns.append(totals)
        winners.append(next((i["winner"] for i in infos.values() if "winner" in i), None))
        if steps >= max_steps:
            break
    return frames, returns, winners


def save_gif(frames: list, path: str | Path, fps: float) -> int:
    """Write RGB frames as a looping GIF; the last frame of the recording lingers for a second.

    Returns:
        The frames the file holds: Pillow merges identical consecutive frames into one longer frame.
    """
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    duration = max(20, round(1000 / fps))
    durations = [duration] * (len(images) - 1) + [max(duration, 1000)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    with Image.open(path) as written:
        return int(getattr(written, "n_frames", 1))


def run(args: argparse.Namespace) -> int:
    from agora_marl.launch.matches import team_of
    from agora_marl.scenarios.check import RENDER_FIX
    from agora_marl.scenarios.registry import make_env

    overrides = {}
    for value in args.agent_policy:
        name, sep, spec = value.partition("=")
        if not (sep and name and spec):
            raise SystemExit(f"agora record: --agent-policy {value!r} must be NAME=POLICY")
        overrides[name] = spec
    scenario, config, modules, sides = args.scenario, parse_config(args.config), list(args.module), []
    if args.run_dir:
        scenario, config, modules, seats = _match(args, overrides, config, modules)
        for agent in seats:  # --agent-policy has the last word, by agent or by team
            seats[agent] = overrides.get(agent, overrides.get(team_of(agent), seats[agent]))
        sides = [(p, [a for a, q in seats.items() if q == p]) for p in dict.fromkeys(seats.values())]
        print(f"{scenario}: " + "; ".join(f"{p} plays {', '.join(agents)}" for p, agents in sides))
        overrides = {**overrides, **seats}
    elif args.opponent or args.seats:
        raise SystemExit("agora record: --opponent and --seats go with a RUN_DIR (agora record RUN_DIR --opponent ...)")
    elif not scenario:
        raise SystemExit("agora record: give --scenario NAME, or a RUN_DIR to record its policy in its world")
    load_modules(modules)
    try:
        env = make_env(scenario, {**config, "render_mode": "rgb_array"})
    except ValueError as exc:
        if "render_mode" not in str(exc):
            raise
        raise SystemExit(f"agora record: {scenario} does not render: {exc}; {RENDER_FIX}") from None
    if "rgb_array" not in env.metadata.get("render_modes", []):
        raise SystemExit(f"agora record: {scenario} does not render rgb_array frames; {RENDER_FIX}")
    try:
        policies = policies_for(env, args.policy, overrides, args.seed)
    except ValueError as exc:
        hint = "; give --opponent SPEC" if args.run_dir and not args.opponent else ""
        raise SystemExit(f"agora record: {exc}{hint}") from None
    frames, returns, winners = record(env, policies, args.episodes, args.max_steps, args.seed)
    env.close()
    written = save_gif(frames, args.out, args.fps or env.metadata.get("render_fps") or 10)
    for episode, (totals, winner) in enumerate(zip(returns, winners, strict=True)):
        team = sum(totals.values())
        each = ", ".join(f"{a} {r:.2f}" for a, r in totals.items())
        parts = [f"return {team:.2f} ({each})"]
        if sides:
            parts.append(", ".join(f"{policy}: {sum(totals[a] for a in seats):.2f}" for policy, seats in sides))
        if winner is not None:
            parts.append(f"winner {winner}")
        print(f"episode {episode}: " + "; ".join(parts))
    episodes = f"{len(returns)} episode" + ("s" if len(returns) != 1 else "")
    # Pillow merges identical consecutive frames into one longer one: say what the file holds.
    merged = f" of {len(frames)} rendered (identical ones merged)" if written != len(frames) else ""
    print(f"wrote {args.out}: {written} frames{merged}, {episodes}")
    return 0


def _match(
    args: argparse.Namespace, overrides: dict[str, str], config: dict, modules: list[str]
) -> tuple[str, dict, list[str], dict[str, str]]:
    """The run's world (its scenario, config and modules) and the policy of each seat: the run's in its seats, the
    opponent's in the others. Prints where the two runs' seats overlap; refuses seats that nobody plays."""
    import os

    from agora_marl.launch.matches import run_side, team_of, trained_run

    try:
        run_ = trained_run(args.run_dir)
    except (ValueError, FileNotFoundError) as exc:  # not a run, a checkpoint of another format, a moved algorithm
        raise SystemExit(f"agora record: {exc}") from None
    agents = list(run_.spec.possible_agents)
    opponent = args.opponent or (run_.config.env.opponent if run_.partial else None)
    try:
        mine = run_side(run_, args.seats) if (args.seats or opponent) else agents
    except ValueError as exc:
        raise SystemExit(f"agora record: {exc}") from None
    others = [a for a in agents if a not in mine]
    seats = dict.fromkeys(mine, str(args.run_dir))
    if others and opponent and os.path.isdir(opponent):
        rival = trained_run(opponent)
        overlap = [a for a in rival.trained if a in mine]
        if overlap:
            print(f"note: {opponent} also trained {', '.join(overlap)}; {args.run_dir} plays them here")
        given = [a for a in others if a in overrides or team_of(a) in overrides]
        uncovered = [a for a in others if a not in rival.trained and a not in given]
        if uncovered:
            raise SystemExit(
                f"agora record: nobody plays {', '.join(uncovered)}: {args.run_dir} plays {', '.join(mine)} and "
                f"{opponent} trained {', '.join(rival.trained)}; give them a policy with --agent-policy "
                f"{uncovered[0]}=POLICY"
            )
        seats.update(dict.fromkeys([a for a in others if a in rival.trained], opponent))
    elif others and opponent:
        seats.update(dict.fromkeys(others, opponent))
    seats.update(dict.fromkeys([a for a in others if a not in seats], args.policy))  # --agent-policy will name them
    env = run_.config.env
    return env.scenario, {**env.config, **config}, [*env.scenario_modules, *modules], seats
