"""Batched stepping: K worlds per message, both layouts, auto-reset, global state, and the same numbers as in process."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from agora_marl import scenarios
from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"
TAG = "mpe2.simple_tag_v3:parallel_env"


def test_stacked_batch_matches_in_process_stepping(server):
    client = RawClient(server.address)
    k, cycles, seed = 3, 4, 11
    created = client.ok(
        {"op": "create", "scenario": SPREAD, "config": {"max_cycles": cycles}, "seed": seed, "copies": k, "join": True}
    )
    worlds = created["worlds"]
    first = client.ok({"op": "reset_batch", "worlds": worlds, "seed": seed, "layout": "stacked", "state": True})
    envs = [scenarios.make_env(SPREAD, {"max_cycles": cycles}) for _ in range(k)]
    expected = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    for i in range(k):
        np.testing.assert_array_equal(first["obs"][i], np.stack([expected[i][a] for a in envs[i].possible_agents]))
        np.testing.assert_array_equal(first["state"][i], envs[i].state())
    rng = np.random.default_rng(0)
    for tick in range(1, cycles + 2):
        actions = rng.integers(0, 5, size=(k, 3))
        reply = client.ok(
            {"op": "step_batch", "worlds": worlds, "layout": "stacked", "actions": actions, "state": True}
        )
        assert reply["obs"].shape == (k, 3, 18) and reply["rewards"].dtype == np.float32
        for i, env in enumerate(envs):
            obs, rewards, term, trunc, _ = env.step({a: int(actions[i, j]) for j, a in enumerate(env.possible_agents)})
            np.testing.assert_allclose(reply["rewards"][i], [rewards[a] for a in env.possible_agents], rtol=1e-6)
            if tick % cycles == 0:
                assert reply["episode_over"][i] and reply["truncated"][i].all()
                np.testing.assert_array_equal(reply["final_obs"][i], np.stack([obs[a] for a in env.possible_agents]))
                obs, _ = env.reset()
                np.testing.assert_array_equal(reply["final_state"].shape, (k, 54))
            else:
                assert not reply["episode_over"][i] and "final_obs" not in reply
            np.testing.assert_array_equal(reply["obs"][i], np.stack([obs[a] for a in env.possible_agents]))
            np.testing.assert_array_equal(reply["state"][i], env.state())
        assert reply["alive"].all()


def test_agents_layout_for_teams_with_different_spaces(server):
    client = RawClient(server.address)
    worlds = client.ok({"op": "create", "scenario": TAG, "seed": 0, "copies": 2, "join": True})["worlds"]
    assert client.request({"op": "reset_batch", "worlds": worlds, "layout": "stacked"})["code"] == "bad_request"
    reply = client.ok({"op": "reset_batch", "worlds": worlds, "layout": "agents", "state": True})
    assert reply["obs"]["adversary_0"].shape == (2, 16) and reply["obs"]["agent_0"].shape == (2, 14)
    agents = ["adversary_0", "adversary_1", "adversary_2", "agent_0"]
    actions = {a: np.ones(2, np.int64) for a in agents}
    step = client.ok({"op": "step_batch", "worlds": worlds, "actions": actions})
    assert step["rewards"].shape == (2, 4) and set(step["obs"]) == set(agents)
    missing = client.request({"op": "step_batch", "worlds": worlds, "actions": {"agent_0": np.ones(2, np.int64)}})
    assert missing["code"] == "bad_action"


def test_batch_refuses_mixed_specs_and_foreign_worlds(server):
    client, other = RawClient(server.address), RawClient(server.address)
    spread = client.ok({"op": "create", "scenario": SPREAD, "copies": 1, "join": True})["worlds"]
    tag = client.ok({"op": "create", "scenario": TAG, "copies": 1, "join": True})["worlds"]
    theirs = other.ok({"op": "create", "scenario": SPREAD, "copies": 1, "join": True})["worlds"]
    assert client.request({"op": "reset_batch", "worlds": spread + tag})["code"] == "batch_mismatch"
    assert client.request({"op": "reset_batch", "worlds": spread + theirs})["code"] == "batch_mismatch"


def test_server_subprocess_with_workers_and_addr_file(tmp_path):
    addr_file = tmp_path / "agora.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agora_marl.envserver",
            "--bind",
            "tcp://127.0.0.1:0",
            "--workers",
            "2",
            "--addr-file",
            str(addr_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not addr_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server never wrote its connection file"
            time.sleep(0.05)
        info = json.loads(addr_file.read_text())
        assert info["protocol"] == 1 and len(info["addresses"]) == 2
        for address in info["addresses"]:
            assert RawClient(address).request({"op": "ping"})["op"] == "pong"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, "SIGTERM should stop every worker cleanly"


@pytest.mark.parametrize("scenario", ["gymnasium:CartPole-v1", "pettingzoo.butterfly.pistonball_v6:parallel_env"])
def test_other_kinds_of_env_are_hosted(server, scenario):
    client = RawClient(server.address)
    config = {"n_pistons": 3, "max_cycles": 5} if "pistonball" in scenario else {}
    created = client.ok({"op": "create", "scenario": scenario, "config": config, "seed": 0, "join": True})
    spec = created["spec"]
    world = created["worlds"][0]
    agent = spec["possible_agents"][0]
    space = spec["action_spaces"][agent]
    action = 0 if space["type"] == "Discrete" else np.zeros(space["shape"], np.float32)
    reply = client.ok({"op": "act", "world": world, "actions": {a: action for a in spec["possible_agents"]}})
    assert (reply["tick"] == 1 or reply["episode_over"]) and reply["obs"][agent].shape == tuple(
        spec["observation_spaces"][agent]["shape"]
    )


def test_vector_backed_group_steps_like_its_per_copy_worlds(server):
    """A group of vectorised copies and the same number of per-copy worlds give identical batches."""
    client = RawClient(server.address)
    k, seed = 4, 5
    group = client.ok({"op": "create", "scenario": "foraging_v0", "seed": seed, "copies": k, "join": True})["worlds"]
    singles = [
        client.ok({"op": "create", "scenario": "foraging_v0", "seed": seed + i, "copies": 1, "join": True})["worlds"][0]
        for i in range(k)
    ]
    a = client.ok({"op": "reset_batch", "worlds": group, "seed": seed, "layout": "stacked", "state": True})
    b = client.ok({"op": "reset_batch", "worlds": singles, "seed": seed, "layout": "stacked", "state": True})
    np.testing.assert_array_equal(a["obs"], b["obs"])
    rng = np.random.default_rng(1)
    episodes_over = 0
    for _ in range(120):
        actions = rng.integers(0, 6, size=(k, 2))
        a = client.ok({"op": "step_batch", "worlds": group, "layout": "stacked", "actions": actions, "state": True})
        b = client.ok({"op": "step_batch", "worlds": singles, "layout": "stacked", "actions": actions, "state": True})
        for key in ("obs", "rewards", "terminated", "truncated", "episode_over", "state"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        if a["episode_over"].any():
            np.testing.assert_array_equal(a["final_obs"][a["episode_over"]], b["final_obs"][b["episode_over"]])
            episodes_over += 1
    assert episodes_over > 0
    # A copy of a group steps only with its whole group.
    assert client.request({"op": "act", "world": group[0], "actions": {"agent_0": 0}})["code"] == "bad_request"
    assert client.request({"op": "reset_batch", "worlds": group[:2]})["code"] == "batch_mismatch"
    assert client.ok({"op": "observe", "world": group[1]})["obs"]["agent_0"].shape == a["obs"].shape[2:]
