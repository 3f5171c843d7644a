"""``agora record``: play episodes of a scenario in process with given policies and save them as an animated GIF."""

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

A policy is random, noop, scripted (simple_spread), MODULE:CALLABLE (called with the observation and action spaces,
it returns a callable obs -> action) or a training run directory (each agent plays its trained network).
--agent-policy NAME=POLICY gives one agent (predator_1) or a team (every agent named prey_*) its own policy.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "record",
        help="render episodes played by given policies into a GIF",
        description="Play episodes of a scenario in this process and save the rgb_array frames as an animated GIF.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", required=True, help="registered name, MODULE:CALLABLE or gymnasium:ENV_ID")
    add_config(parser)
    parser.add_argument(
        "--module", action="append", default=[], metavar="MODULE|FILE.py", help="import your scenarios' module first"
    )
    parser.add_argument("--policy", default="random", help="every agent's policy (default %(default)s)")
    parser.add_argument(
        "--agent-policy", action="append", default=[], metavar="NAME=POLICY", help="an agent's or a team's policy"
    )
    parser.add_argument("--episodes", type=int, default=1, help="episodes to record (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=1000, help="at most this many steps in all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (default %(default)s)")
    parser.add_argument("--fps", type=float, help="frames per second (default: the scenario's render_fps)")
    parser.add_argument("--out", default="episode.gif", help="the GIF to write (default %(default)s)")
    parser.set_defaults(func=run)


def policies_for(env, default: str, overrides: dict[str, str], seed: int) -> dict[str, Callable[[Any], Any]]:
    """One policy per agent: ``overrides`` by agent name or team prefix, else ``default``."""
    from agora_marl.agents.policies import random_policy
    from agora_marl.launch.policies import seat_policy

    out = {}
    for i, agent in enumerate(env.possible_agents):
        team = str(agent).rsplit("_", 1)[0]
        spec = overrides.get(agent, overrides.get(team, default))
        obs_space, act_space = env.observation_space(agent), env.action_space(agent)
        if spec == "random":  # seeded, so that a recording can be made again
            out[agent] = random_policy(obs_space, act_space, seed=seed + i)
        else:
            out[agent] = seat_policy(spec, obs_space, act_space, agent)
    unknown = set(overrides) - set(env.possible_agents) - {str(a).rsplit("_", 1)[0] for a in env.possible_agents}
    if unknown:
        raise ValueError(f"--agent-policy names no agent or team: {sorted(unknown)} (agents: {env.possible_agents})")
    return out


def record(
    env, policies: dict[str, Callable[[Any], Any]], episodes: int, max_steps: int, seed: int
) -> tuple[list, list[dict[str, float]]]:
    """Play ``episodes`` episodes (at most ``max_steps`` steps in all); return the frames and each episode's returns."""
    frames, returns = [], []
    steps = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        frames.append(env.render())
        totals = dict.fromkeys(env.possible_agents, 0.0)
        while env.agents and steps < max_steps:
            obs, rewards, _, _, _ = env.step({a: policies[a](obs[a]) for a in env.agents})
            for agent, reward in rewards.items():
                totals[agent] += float(reward)
            frames.append(env.render())
            steps += 1
        returns.append(totals)
        if steps >= max_steps:
            break
    return frames, returns


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
    from agora_marl.scenarios.check import RENDER_FIX
    from agora_marl.scenarios.registry import make_env

    load_modules(args.module)
    overrides = {}
    for value in args.agent_policy:
        name, sep, spec = value.partition("=")
        if not (sep and name and spec):
            raise SystemExit(f"agora record: --agent-policy {value!r} must be NAME=POLICY")
        overrides[name] = spec
    try:
        env = make_env(args.scenario, {**parse_config(args.config), "render_mode": "rgb_array"})
    except ValueError as exc:
        if "render_mode" not in str(exc):
            raise
        raise SystemExit(f"agora record: {args.scenario} does not render: {exc}; {RENDER_FIX}") from None
    if "rgb_array" not in env.metadata.get("render_modes", []):
        raise SystemExit(f"agora record: {args.scenario} does not render rgb_array frames; {RENDER_FIX}")
    try:
        policies = policies_for(env, args.policy, overrides, args.seed)
    except ValueError as exc:
        raise SystemExit(f"agora record: {exc}") from None
    frames, returns = record(env, policies, args.episodes, args.max_steps, args.seed)
    env.close()
    written = save_gif(frames, args.out, args.fps or env.metadata.get("render_fps") or 10)
    for episode, totals in enumerate(returns):
        team = sum(totals.values())
        each = ", ".join(f"{a} {r:.2f}" for a, r in totals.items())
        print(f"episode {episode}: return {team:.2f} ({each})")
    episodes = f"{len(returns)} episode" + ("s" if len(returns) != 1 else "")
    # Pillow merges identical consecutive frames into one longer one: say what the file holds.
    merged = f" of {len(frames)} rendered (identical ones merged)" if written != len(frames) else ""
    print(f"wrote {args.out}: {written} frames{merged}, {episodes}")
    return 0
