"""Batched stepping: K worlds per message, both layouts, auto-reset, global state, and the same numbers as in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo import ParallelEnv

from agora_marl import scenarios
from agora_marl.envserver.protocol.vocabulary import PROTOCOL_VERSION
from agora_marl.scenarios.vector import VectorScenario, vector_env
from tests.procs import wait_for_connection_file
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


def test_a_session_asking_for_joined_frames_gets_the_same_batch_in_one_array_frame(server):
    """hello's ``frames: "joined"`` puts every array of a reply in one frame; the numbers are those of separate frames.
    A request may come joined whatever its session asked (here its actions: one array per agent)."""
    from agora_marl.envserver.protocol import pack, unpack

    separate, joined = RawClient(server.address), RawClient(server.address, hello=False)
    joined.secret = joined.ok({"op": "hello", "name": "joined", "frames": "joined"})["secret"]
    refused = joined.request({"op": "hello", "frames": "one-big-frame"})
    assert refused["code"] == "bad_request" and "frames" in refused["message"]
    replies = []
    for client in (separate, joined):
        worlds = client.ok({"op": "create", "scenario": SPREAD, "seed": 3, "copies": 2, "join": True})["worlds"]
        client.ok({"op": "reset_batch", "worlds": worlds, "seed": 3, "layout": "agents", "state": True})
        actions = {f"agent_{i}": np.array([i, 4 - i]) for i in range(3)}
        request = {"op": "step_batch", "id": 9, "secret": client.secret, "worlds": worlds, "state": True}
        frames = pack({**request, "actions": actions}, joined=True)
        assert len(frames) == 2
        client.send_frames(frames)
        assert client.socket.poll(10_000)
        frames = client.socket.recv_multipart()
        replies.append((frames, unpack(frames)))
    (frames_a, a), (frames_b, b) = replies
    assert len(frames_b) == 2 and len(frames_a) > 8, "joined: the header and one array frame; else one per array"
    assert msgpack.unpackb(frames_b[0])["joined"] is True
    assert sorted(a) == sorted(b) and sorted(a["obs"]) == sorted(b["obs"]) == list(actions)
    for key in ("rewards", "terminated", "truncated", "alive", "episode_over", "state"):
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].dtype == b[key].dtype
    for agent in actions:
        np.testing.assert_array_equal(a["obs"][agent], b["obs"][agent])


def test_joined_and_separate_frames_carry_the_same_arrays():
    from agora_marl.envserver.protocol import pack, unpack

    message = {
        "op": "batch",
        "id": 4,
        "scalar": np.array(5, np.int64),  # 0-d stays 0-d
        "empty": np.zeros((0, 3), np.float32),
        "flags": np.array([[True, False, True]]),
        "strided": np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2],
        "nested": {"a": np.arange(3, dtype=np.uint8), "b": np.linspace(0, 1, 5), "plain": 1},
    }
    separate, joined = pack(message), pack(message, joined=True)
    assert len(separate) == 7 and len(joined) == 2
    header = msgpack.unpackb(joined[0])
    assert all(entry[3] % 8 == 0 for entry in header["arrays"]), "every array starts aligned"
    for out in (unpack([f if type(f) is bytes else f.tobytes() for f in frames]) for frames in (separate, joined)):
        for key in ("scalar", "empty", "flags", "strided"):
            np.testing.assert_array_equal(out[key], message[key])
            assert out[key].shape == message[key].shape and out[key].dtype == message[key].dtype
        np.testing.assert_array_equal(out["nested"]["b"], message["nested"]["b"])
        assert out["nested"]["plain"] == 1 and not out["flags"].flags.writeable
    assert len(pack({"op": "x", "one": np.zeros(3)}, joined=True)) == 2 and "joined" not in msgpack.unpackb(
        pack({"op": "x", "one": np.zeros(3)}, joined=True)[0]
    ), "a single array travels as it is"


def test_arrays_placed_by_the_sender_pack_as_the_walk_would():
    """wire.PLACED (how a lockstep step reply hands over its observations) gives the very frames of the walk."""
    from agora_marl.envserver.protocol import pack
    from agora_marl.envserver.protocol.wire import PLACED

    obs = {"agent_0": np.arange(4, dtype=np.float32), "agent_1": np.ones((2, 2), np.int16)[:, :1]}
    plain = {"op": "step", "id": 3, "world": 1, "rewards": {"agent_0": -1.0}, "infos": {"agent_0": {}}, "filled": {}}
    walked = pack({**plain, "obs": obs}, joined=False)
    placed = pack({**plain, PLACED: [(("obs", a), v) for a, v in obs.items()]})
    assert [bytes(memoryview(f).cast("B")) for f in walked] == [bytes(memoryview(f).cast("B")) for f in placed]
    for joined in (False, True):
        assert len(pack({**plain, PLACED: [(("obs", "agent_0"), obs["agent_0"])]}, joined)) == 2


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
        wait_for_connection_file(addr_file, proc)
        info = json.loads(addr_file.read_text())
        assert info["protocol"] == PROTOCOL_VERSION and len(info["addresses"]) == 2
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
    # A copy of a vector block steps only with its whole block.
    assert client.request({"op": "act", "world": group[0], "actions": {"agent_0": 0}})["code"] == "bad_request"
    assert client.request({"op": "reset_batch", "worlds": group[:2]})["code"] == "batch_mismatch"
    assert client.ok({"op": "observe", "world": group[1]})["obs"]["agent_0"].shape == a["obs"].shape[2:]


LOCAL_ONLY = pytest.mark.skipif(bool(os.environ.get("AGORA_SERVER")), reason="registers a scenario in this process")


class _CountingVector(VectorScenario):
    """Two agents whose observation is the copy's step count: a Box (so the state is their concatenation) or a
    Discrete (so the world has no global state). No ``state_space`` of its own."""

    name = "counting_v0"
    possible_agents = ["a", "b"]

    def __init__(self, num_copies: int, discrete: bool = False):
        super().__init__(num_copies)
        self.discrete = discrete
        space = spaces.Discrete(1000) if discrete else spaces.Box(0, 1000, (1,), np.float32)
        self.observation_spaces = dict.fromkeys(self.possible_agents, space)
        self.action_spaces = dict.fromkeys(self.possible_agents, spaces.Discrete(2))
        self.t = np.zeros(num_copies, np.int64)

    def _obs(self):
        if self.discrete:
            return {a: self.t.copy() for a in self.possible_agents}
        return {a: self.t[:, None].astype(np.float32) + i for i, a in enumerate(self.possible_agents)}

    def reset(self, seed=None, copies=None):
        self.t[self.seed_copies(seed, copies)] = 0
        return self._obs()

    def step(self, actions):
        self.t += 1
        flags = np.zeros((self.num_copies, 2), bool)
        flags[self.t >= 3] = True
        return self._obs(), np.ones((self.num_copies, 2), np.float32), flags, np.zeros_like(flags)


@LOCAL_ONLY
def test_a_vector_world_gives_the_state_its_spec_advertises_and_a_refused_state_steps_nothing(server):
    scenarios.register("test_counting_v0", vector_env(_CountingVector), vector_factory=_CountingVector)
    client = RawClient(server.address)
    created = client.ok({"op": "create", "scenario": "test_counting_v0", "seed": 0, "copies": 2, "join": True})
    assert created["spec"]["state_space"]["shape"] == [2]  # the concatenated observations
    worlds, actions = created["worlds"], {"a": np.zeros(2, np.int64), "b": np.zeros(2, np.int64)}
    for tick in (1, 2, 3):
        reply = client.ok({"op": "step_batch", "worlds": worlds, "actions": actions, "state": True})
        if tick < 3:
            np.testing.assert_array_equal(reply["state"], [[tick, tick + 1]] * 2)
        else:  # the episode ended: final_state is the last observations, state the new episode's first
            np.testing.assert_array_equal(reply["final_state"], [[3, 4]] * 2)
            np.testing.assert_array_equal(reply["state"], [[0, 1]] * 2)
        np.testing.assert_array_equal(reply["state"][0], client.ok({"op": "state", "world": worlds[0]})["state"])

    bare = client.ok(
        {"op": "create", "scenario": "test_counting_v0", "config": {"discrete": True}, "copies": 2, "join": True}
    )
    assert bare["spec"]["state_space"] is None
    refused = client.request({"op": "step_batch", "worlds": bare["worlds"], "actions": actions, "state": True})
    assert refused["code"] == "bad_request"
    ticks = {w["world"]: w["tick"] for w in client.ok({"op": "list"})["worlds"]}
    assert [ticks[w] for w in bare["worlds"]] == [0, 0], "a refused step_batch stepped its worlds"
    assert client.request({"op": "reset_batch", "worlds": bare["worlds"], "state": True})["code"] == "bad_request"


class _RaisingWorld(ParallelEnv):
    """One agent; the copy reset with seed ``raise_seed`` raises at its step ``raise_at``."""

    metadata = {"name": "raising_v0", "is_parallelizable": True}

    def __init__(self, raise_seed: int = 1, raise_at: int = 2):
        self.possible_agents = ["agent_0"]
        self.raise_seed, self.raise_at, self.seed = raise_seed, raise_at, None

    def observation_space(self, agent):
        return spaces.Box(0, 100, (1,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        self.seed = seed if seed is not None else self.seed
        self.agents, self.t = list(self.possible_agents), 0
        return {"agent_0": np.zeros(1, np.float32)}, {"agent_0": {}}

    def step(self, actions):
        self.t += 1
        if self.seed == self.raise_seed and self.t == self.raise_at:
            raise RuntimeError(f"copy seeded {self.seed} broke at step {self.t}")
        return {"agent_0": np.full(1, self.t, np.float32)}, {"agent_0": 1.0}, {"agent_0": False}, {"agent_0": False}, {}


@LOCAL_ONLY
def test_a_world_that_raises_in_a_batch_closes_the_whole_batch(server):
    scenarios.register("test_raising_v0", _RaisingWorld)
    client = RawClient(server.address)
    worlds = client.ok({"op": "create", "scenario": "test_raising_v0", "seed": 0, "copies": 3, "join": True})["worlds"]
    bystander = client.ok({"op": "create", "scenario": "test_raising_v0", "seed": 7, "join": True})["worlds"][0]
    actions = {"agent_0": np.zeros(3, np.int64)}
    assert client.ok({"op": "step_batch", "worlds": worlds, "actions": actions})["obs"]["agent_0"].tolist() == [[1]] * 3
    failed = client.request({"op": "step_batch", "worlds": worlds, "actions": actions})
    assert failed["code"] == "scenario_error" and f"world {worlds[1]} raised" in failed["message"]
    # World 0 had stepped, world 1 broke mid-step, world 2 had not stepped: all of them are closed, so the client
    # knows where every world stands.
    assert set(worlds).isdisjoint(w["world"] for w in client.ok({"op": "list"})["worlds"])
    assert client.request({"op": "step_batch", "worlds": worlds, "actions": actions})["code"] == "unknown_world"
    assert client.ok({"op": "act", "world": bystander, "actions": {"agent_0": 0}})["tick"] == 1


def test_a_batch_is_refused_while_an_act_waits_in_one_of_its_worlds(server):
    """reset_batch under a waiting act would drop its actions and its deadline: the act would wait forever."""
    client = RawClient(server.address)
    world = client.ok({"op": "create", "scenario": SPREAD, "seed": 0, "join": True, "deadline_ms": 300})["worlds"][0]
    waiting = client.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    assert client.request({"op": "reset_batch", "worlds": [world]})["code"] == "already_acted"
    step = client.recv(timeout_ms=3000)
    assert step["id"] == waiting and step["tick"] == 1 and step["filled"] == {"agent_1": "late", "agent_2": "late"}
    assert client.ok({"op": "reset_batch", "worlds": [world]})["obs"]["agent_0"].shape == (1, 18)
