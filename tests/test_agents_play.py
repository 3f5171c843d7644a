"""Ready policies, `agora play` (in process and as a command), and reclaiming a lost seat."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from agora_marl.agents import AgentClient
from agora_marl.agents.play import PlaySettings, play
from agora_marl.agents.policies import named_policy
from agora_marl.scenarios import make_env

SPREAD = "mpe2.simple_spread_v3:parallel_env"
ROOT = Path(__file__).resolve().parent.parent


def _team_returns(policy: str, continuous: bool, episodes: int = 6) -> float:
    env = make_env(SPREAD, {"continuous_actions": continuous})
    totals = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        policies = {a: named_policy(policy, env.observation_space(a), env.action_space(a)) for a in env.agents}
        total = 0.0
        while env.agents:
            obs, rewards, *_ = env.step({a: policies[a](obs[a]) for a in env.agents})
            total += sum(rewards.values())
        totals.append(total)
    return float(np.mean(totals))


@pytest.mark.parametrize("continuous", [False, True])
def test_scripted_spread_covers_the_landmarks(continuous):
    scripted, noop = _team_returns("scripted", continuous), _team_returns("noop", continuous)
    # Measured: scripted about -22 (discrete) and -17 (continuous); doing nothing about -77.
    assert scripted > -35 and scripted > noop + 30


def _catch_rate(predators: str, prey: str, episodes: int = 40) -> float:
    env = make_env("predator_prey_v0", {})
    policies = {
        a: named_policy(
            predators if a.startswith("predator") else prey, env.observation_space(a), env.action_space(a), agent=a
        )
        for a in env.possible_agents
    }
    caught = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        while env.agents:
            obs, _, terminated, *_ = env.step({a: policies[a](obs[a]) for a in env.agents})
            caught += bool(terminated.get("prey_0"))
    return caught / episodes


def test_scripted_predators_chase_and_the_scripted_prey_flees():
    # Measured over 200 episodes: random vs random 35% caught; random predators vs the scripted prey 1%; scripted
    # predators vs random prey 100%, vs the scripted prey 96% (so a learning team has room above and below).
    assert _catch_rate("scripted", "random") > 0.9
    assert _catch_rate("random", "scripted") < 0.1 < _catch_rate("random", "random")


def test_named_policy_resolves_names(tmp_path, monkeypatch):
    box = spaces.Box(-1, 1, (3,), np.float32)
    action = spaces.Box(0, 1, (2,), np.float32)
    assert np.array_equal(named_policy("noop", box, action)(None), np.zeros(2, np.float32))
    assert named_policy("random", box, action)(None) in action
    (tmp_path / "my_policies.py").write_text(
        textwrap.dedent(
            """
            def make(observation_space, action_space):
                return lambda obs: action_space.high
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert np.array_equal(named_policy("my_policies:make", box, action)(None), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="unknown policy"):
        named_policy("clever", box, action)
    with pytest.raises(ValueError, match="cannot load"):
        named_policy("my_policies:nothing", box, action)
    with pytest.raises(ValueError, match="simple_spread"):
        named_policy("scripted", box, spaces.Discrete(5))
    with pytest.raises(ValueError, match="run loader"):
        named_policy(str(tmp_path), box, action)  # a run directory, and no loader given
    loaded = named_policy(str(tmp_path), box, action, "a", run_loader=lambda *args: lambda obs: args)
    assert loaded(None) == (str(tmp_path), box, action, "a")


def test_play_creates_a_world_and_reports_returns(server):
    lines: list[str] = []
    settings = PlaySettings(server.address, scenario=SPREAD, config={"max_cycles": 5}, policy="scripted", episodes=3)
    returns = play(settings, out=lines.append)
    assert len(returns) == 3 and all(r < 0 for r in returns)
    assert [line.split(":")[0] for line in lines if line.startswith("episode")] == [
        "episode 1",
        "episode 2",
        "episode 3",
    ]
    with AgentClient(server.address) as client:
        assert client.list_worlds() == []  # play closes the world it created


def test_play_reclaims_a_seat_lost_to_silence(make_server, tmp_path, monkeypatch):
    server = make_server(heartbeat_timeout_s=0.5)
    (tmp_path / "slow_policy.py").write_text(
        textwrap.dedent(
            """
            import time

            def make(observation_space, action_space):
                calls = []
                def policy(obs):
                    calls.append(1)
                    if len(calls) == 3:
                        time.sleep(1.5)  # silent past the heartbeat timeout: the server gives the seat up
                    return 0
                return policy
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lines: list[str] = []
    with AgentClient(server.address, timeout_s=10.0) as owner:
        world = owner.create(SPREAD, config={"max_cycles": 4}, seed=0, wait_for_seats=False).worlds[0]
        settings = PlaySettings(server.address, world=world, seats=["agent_1"], policy="slow_policy:make", episodes=2)
        result: list[list[float]] = []
        player = threading.Thread(target=lambda: result.append(play(settings, out=lines.append)))
        player.start()
        deadline = time.monotonic() + 20
        while player.is_alive() and time.monotonic() < deadline:
            owner.heartbeat()  # the owner stays; only the player goes silent
            player.join(0.1)
        assert not player.is_alive()
    assert any("reclaiming" in line for line in lines), lines
    assert len(result[0]) == 2


def test_agora_play_command(server):
    done = subprocess.run(
        [sys.executable, "-m", "agora_marl", "play", "--connect", server.address, "--scenario", SPREAD]
        + ["--config", "max_cycles=4", "--policy", "random", "--episodes", "2", "--seed", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(re.findall(r"^episode \d+: return -?[\d.]+", done.stdout, re.M)) == 2
    assert re.search(r"^2 episodes: return -?[\d.]+ ± [\d.]+ \(mean ± std over 2 episodes\)$", done.stdout, re.M)


def test_a_run_directory_is_loaded_before_any_seat_is_taken(tmp_path):
    """A run's policy loads first (importing torch and its algorithm can outlast the heartbeat of seats already
    joined): a directory that is no run is reported at once, without asking the server (none listens here)."""
    done = subprocess.run(
        [sys.executable, "-m", "agora_marl", "play", "--connect", "tcp://127.0.0.1:1", "--world", "1"]
        + ["--policy", str(tmp_path), "--timeout", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"--policy {tmp_path}: {tmp_path} is not a run directory (no config.toml)" in done.stderr
