"""examples/raw_client.py, a client written from docs/protocol.md in raw pyzmq + msgpack, against a real server."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agora_marl.agents import AgentClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "raw_client.py"


def _run(*args: str, cwd: Path, check: bool = True) -> str:
    # -I: no PYTHONPATH, no current directory on sys.path: the example cannot reach the project's code.
    done = subprocess.run(
        [sys.executable, "-I", str(EXAMPLE), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if not check:
        return done.stdout + done.stderr
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_uses_no_project_code():
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"itertools", "sys", "msgpack", "numpy", "zmq"}


@pytest.mark.parametrize(
    "scenario",
    ["mpe2.simple_spread_v3:parallel_env", "gymnasium:Pendulum-v1"],  # Discrete and Box actions
)
def test_example_creates_a_world_and_plays(server, tmp_path, scenario):
    out = _run(server.address, scenario, "2", cwd=tmp_path)
    returns = [float(x) for x in re.findall(r"episode \d+: return (-?[\d.]+)", out)]
    assert len(returns) == 2 and all(r < 0 for r in returns), out


def test_example_joins_a_shared_world(server, tmp_path):
    with AgentClient(server.address, timeout_s=10.0) as owner:
        world = owner.create("mpe2.simple_spread_v3:parallel_env", config={"max_cycles": 5}, wait_for_seats=False)
        out = _run(server.address, str(world.worlds[0]), "3", cwd=tmp_path)
        assert "playing ['agent_0', 'agent_1', 'agent_2']" in out and "episode 3: return" in out
        assert owner.list_worlds()[0]["episode"] == 3


def test_example_plays_its_seats_of_several_shared_worlds_in_one_message(server, tmp_path):
    with AgentClient(server.address, timeout_s=10.0) as owner:
        owner.hello(keep_alive_s=60.0)  # idle while the example plays
        worlds = owner.create(
            "mpe2.simple_spread_v3:parallel_env", config={"max_cycles": 4}, copies=3, wait_for_seats=False
        ).worlds
        for world in worlds:
            owner.join(world, seats=["agent_2"])  # the owner holds one seat of each and never acts: filled
        out = _run(server.address, ",".join(map(str, worlds)), "3", cwd=tmp_path)
        assert "playing ['agent_0', 'agent_1']" in out and out.count("(1 filled seats)") == 3, out
        assert [w["episode"] for w in owner.list_worlds()] == [1, 1, 1]


def test_example_finds_a_named_group_and_plays_its_seats_with_the_invitation(server, tmp_path):
    with AgentClient(server.address, timeout_s=10.0) as owner:
        owner.hello(keep_alive_s=60.0)  # idle while the example plays
        created = owner.create(
            "mpe2.simple_spread_v3:parallel_env",
            config={"max_cycles": 4},
            copies=2,
            wait_for_seats=False,
            group="raw-league",
            invite_only=["agent_1"],
        )
        for world in created.worlds:
            owner.join(world, seats=["agent_2"])
        target = "group:raw-league:agent_[01]"
        refused = _run(server.address, target, "2", cwd=tmp_path, check=False)
        assert "join_group: not_allowed" in refused
        out = _run(server.address, target, "2", created.invite_token, cwd=tmp_path)
        assert f"worlds {created.worlds}: playing ['agent_0', 'agent_1']" in out and out.count("(1 filled seats)") == 2
