"""The step rule over real sockets: lockstep, deadlines, heartbeats, seat loss, reconnects, episodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo import ParallelEnv

from agora_marl import scenarios
from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"
ROOT = Path(__file__).resolve().parents[1]


def _shared_world(owner: RawClient, **fields) -> int:
    return owner.ok({"op": "create", "scenario": SPREAD, "seed": 4, **fields})["worlds"][0]


def test_two_clients_step_in_lockstep_and_match_in_process(server):
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})

    env = scenarios.make_env(SPREAD)
    env.reset(seed=4)
    rng = np.random.default_rng(0)
    for tick in range(1, 6):
        a = rng.integers(0, 5, 3)
        alice_id = alice.send({"op": "act", "world": world, "actions": {"agent_0": int(a[0])}})
        with pytest.raises(TimeoutError):  # alice waits for bob: no reply yet
            alice.recv(timeout_ms=100)
        bob_reply = bob.request({"op": "act", "world": world, "actions": {"agent_1": int(a[1]), "agent_2": int(a[2])}})
        alice_reply = alice.recv()
        assert alice_reply["id"] == alice_id and alice_reply["tick"] == bob_reply["tick"] == tick
        obs, rewards, *_ = env.step({f"agent_{i}": int(a[i]) for i in range(3)})
        np.testing.assert_array_equal(alice_reply["obs"]["agent_0"], obs["agent_0"])
        np.testing.assert_array_equal(bob_reply["obs"]["agent_2"], obs["agent_2"])
        assert bob_reply["rewards"]["agent_1"] == pytest.approx(rewards["agent_1"])
        assert set(alice_reply["obs"]) == {"agent_0"} and set(bob_reply["obs"]) == {"agent_1", "agent_2"}
        assert alice_reply["filled"] == {} == bob_reply["filled"]


def test_early_actions_wait_for_every_seat_to_be_held(server):
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=100)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    with pytest.raises(TimeoutError):  # bob has not joined: no deadline runs yet
        alice.recv(timeout_ms=400)
    bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    bob.request({"op": "act", "world": world, "actions": {"agent_1": 0, "agent_2": 0}})
    assert alice.recv()["tick"] == 1


def test_an_early_act_gets_its_deadline_when_the_world_starts(server):
    """An act sent before the last seat is held waits for the start, then for one deadline: never forever."""
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=200)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    alice_id = alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    with pytest.raises(TimeoutError):  # not started: no deadline runs yet
        alice.recv(timeout_ms=300)
    started = time.monotonic()
    bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})  # the world starts; bob never acts
    reply = alice.recv(timeout_ms=1500)  # well inside the fixture's 2 s heartbeat timeout: bob is not lost yet
    assert reply["id"] == alice_id and reply["tick"] == 1 and time.monotonic() - started >= 0.15
    assert reply["filled"] == {"agent_1": "late", "agent_2": "late"}


def test_filled_seats_reach_the_other_clients(server):
    """The step reply names every seat of the world that got the fill action, and why: late, free or lost."""
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=500, wait_for_seats=False)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    bob.ok({"op": "join", "world": world, "seats": ["agent_1"]})  # bob holds agent_1 and never acts
    reply = alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
    assert reply["tick"] == 1 and reply["filled"] == {"agent_1": "late", "agent_2": "free"}
    assert "late" not in reply["infos"]["agent_0"]
    bob.ok({"op": "leave", "world": world})  # alice is now the only holder: she steps at once
    assert alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})["filled"] == {
        "agent_1": "free",
        "agent_2": "free",
    }
    owner.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    both = owner.request({"op": "act", "world": world, "actions": {"agent_1": 0, "agent_2": 0}})
    assert both["filled"] == {} == alice.recv()["filled"]


def test_deadline_fills_a_silent_seat_and_marks_it_late(server):
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=300, wait_for_seats=True)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    start = time.monotonic()
    reply = alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
    waited = time.monotonic() - start
    assert reply["tick"] == 1 and waited >= 0.25 and reply["filled"] == {"agent_1": "late", "agent_2": "late"}
    # bob's late action now counts for tick 2, where alice is the one missing.
    late = bob.request({"op": "act", "world": world, "actions": {"agent_1": 1, "agent_2": 1}})
    assert late["tick"] == 2


def test_silent_client_loses_its_seats_and_reclaims_them_with_its_token(make_server):
    server = make_server(heartbeat_timeout_s=0.5)
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=5000)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    tokens = bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})["seats"]
    owner.ok({"op": "ping"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alice.ok({"op": "ping"})
        owner.ok({"op": "ping"})
        seats = {w["world"]: w for w in owner.ok({"op": "list"})["worlds"]}[world]["seats"]
        if seats["agent_1"] == "lost":
            break
        time.sleep(0.1)
    assert seats == {"agent_0": "held", "agent_1": "lost", "agent_2": "lost"}
    # Lost seats are not waited for: alice steps at once, far inside the 5 s deadline.
    start = time.monotonic()
    stepped = alice.request({"op": "act", "world": world, "actions": {"agent_0": 2}})
    assert stepped["tick"] == 1 and stepped["filled"] == {"agent_1": "lost", "agent_2": "lost"}
    assert time.monotonic() - start < 1.0
    # A stranger cannot take a lost seat; the token can.
    stranger = RawClient(server.address)
    assert stranger.request({"op": "join", "world": world, "seats": ["agent_1"]})["code"] == "seat_taken"
    back = RawClient(server.address)
    assert back.ok({"op": "join", "world": world, "tokens": tokens})["seats"] == tokens
    alice.send({"op": "act", "world": world, "actions": {"agent_0": 0}})
    resumed = back.request({"op": "act", "world": world, "actions": {"agent_1": 3, "agent_2": 4}})
    assert resumed["tick"] == 2 and alice.recv()["tick"] == 2


def _listed(client: RawClient) -> set[int]:
    return {w["world"] for w in client.ok({"op": "list"})["worlds"]}


def _gone_within(client: RawClient, world: int, seconds: float) -> bool:
    """Whether ``world`` leaves the server's list within ``seconds`` (``client`` stays alive: it asks)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if world not in _listed(client):
            return True
        time.sleep(0.05)
    return False


def test_a_world_nobody_owns_or_holds_is_closed(make_server):
    """The creator never joins and goes silent, then its players go silent too: the world closes, it does not leak."""
    server = make_server(heartbeat_timeout_s=0.3)
    owner, alice, bob, watcher = (RawClient(server.address) for _ in range(4))
    world = _shared_world(owner)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    bob.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    assert _gone_within(watcher, world, 4 * 0.3 + 2.0), "a world with no owner and no live holder stayed open"


def test_an_ownerless_world_closes_when_its_last_holder_leaves(make_server):
    server = make_server(heartbeat_timeout_s=0.3)
    owner, alice = RawClient(server.address), RawClient(server.address)
    world = _shared_world(owner)
    alice.ok({"op": "join", "world": world})
    end = time.monotonic() + 4 * 0.3  # the owner goes silent; alice, alive, keeps the world open
    while time.monotonic() < end:
        assert world in _listed(alice)
        time.sleep(0.05)
    alice.ok({"op": "leave", "world": world})
    assert world not in _listed(alice), "a world with no owner and only free seats stayed open"


_PLAYER = textwrap.dedent(
    """
    import json, sys
    from tests.rawwire import RawClient
    client = RawClient(sys.argv[1])
    joined = client.ok({"op": "join", "world": int(sys.argv[2]), "seats": ["agent_1", "agent_2"]})
    print(json.dumps(joined["seats"]), flush=True)
    while True:
        client.request({"op": "act", "world": int(sys.argv[2]), "actions": {"agent_1": 0, "agent_2": 0}})
    """
)


def test_killed_client_costs_a_deadline_then_its_token_resumes_the_seat(make_server):
    server = make_server(heartbeat_timeout_s=1.0)
    owner, alice = RawClient(server.address), RawClient(server.address)
    for client in (owner, alice):  # idle while the player starts, which may take over a second
        client.ok({"op": "hello", "keep_alive_s": 60})
    world = _shared_world(owner, deadline_ms=200)
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    player = subprocess.Popen(
        [sys.executable, "-c", _PLAYER, server.address, str(world)],
        stdout=subprocess.PIPE,
        cwd=ROOT,  # `python -c` imports from its working directory: the player's tests.rawwire
        text=True,
    )
    try:
        tokens = json.loads(player.stdout.readline())
        for _ in range(3):  # lockstep with the live player
            alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
        os.kill(player.pid, signal.SIGKILL)
        player.wait(5)
        # The player may have had one act in flight; after that its seats cost a deadline each tick (late), until
        # the heartbeat timeout releases them and alice steps at once again.
        durations = []
        end = time.monotonic() + 5
        while time.monotonic() < end:
            start = time.monotonic()
            alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
            durations.append(time.monotonic() - start)
            owner.ok({"op": "ping"})
            if len(durations) > 2 and durations[-1] < 0.05 and max(durations) >= 0.15:
                break
        assert max(durations) >= 0.15, f"the dead player's seats were never waited for: {durations}"
        assert durations[-1] < 0.05, f"the dead player's seats were never released: {durations}"
        back = RawClient(server.address)
        back.ok({"op": "join", "world": world, "tokens": tokens})
        alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
        resumed = back.request({"op": "act", "world": world, "actions": {"agent_1": 0, "agent_2": 0}})
        assert resumed["tick"] == alice.recv()["tick"] and resumed["filled"] == {}
    finally:
        player.kill()


def test_token_takeover_interrupts_the_old_holder(server):
    owner, alice, twin = (RawClient(server.address) for _ in range(3))
    world = _shared_world(owner, deadline_ms=5000, wait_for_seats=False)
    tokens = alice.ok({"op": "join", "world": world, "seats": ["agent_0", "agent_1"]})["seats"]
    alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    twin.ok({"op": "join", "world": world, "tokens": {"agent_0": tokens["agent_0"]}})
    assert alice.recv()["code"] == "interrupted"
    assert alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})["code"] == "not_your_seat"


def test_observer_watches_but_never_acts(server):
    owner, watcher = RawClient(server.address), RawClient(server.address)
    created = owner.ok({"op": "create", "scenario": SPREAD, "seed": 0, "join": True})
    world = created["worlds"][0]
    watcher.ok({"op": "join", "world": world, "role": "observer", "observer_token": created["observer_token"]})
    assert set(watcher.ok({"op": "observe", "world": world})["obs"]) == {"agent_0", "agent_1", "agent_2"}
    assert watcher.ok({"op": "state", "world": world})["state"].shape == (54,)
    assert watcher.request({"op": "act", "world": world, "actions": {"agent_0": 1}})["code"] == "not_your_seat"


def test_auto_reset_reports_final_obs_and_manual_reset_is_the_owners(server):
    client = RawClient(server.address)
    config = {"max_cycles": 3}
    auto = client.ok({"op": "create", "scenario": SPREAD, "config": config, "seed": 0, "join": True})["worlds"][0]
    act = {"agent_0": 0, "agent_1": 0, "agent_2": 0}
    replies = [client.ok({"op": "act", "world": auto, "actions": act}) for _ in range(3)]
    assert [r["tick"] for r in replies] == [1, 2, 0] and replies[-1]["episode"] == 1
    assert replies[-1]["episode_over"] and all(replies[-1]["truncated"].values())
    assert set(replies[-1]["final_obs"]) == set(act)

    manual = client.ok(
        {"op": "create", "scenario": SPREAD, "config": config, "seed": 0, "join": True, "auto_reset": False}
    )["worlds"][0]
    for _ in range(3):
        last = client.ok({"op": "act", "world": manual, "actions": act})
    assert last["agents"] == [] and last["episode_over"] and "final_obs" not in last
    assert client.request({"op": "act", "world": manual, "actions": act})["code"] == "episode_over"
    assert client.ok({"op": "reset", "world": manual, "seed": 0})["tick"] == 0
    assert client.ok({"op": "act", "world": manual, "actions": act})["tick"] == 1


class _DyingWorld(ParallelEnv):
    """agent_1 is terminated at tick 2; the episode ends at tick 4. Observation = tick."""

    metadata = {"name": "dying_v0", "is_parallelizable": True}

    def __init__(self):
        self.possible_agents = ["agent_0", "agent_1"]

    def observation_space(self, agent):
        return spaces.Box(0, 100, (1,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return {a: np.zeros(1, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), f"actions for {sorted(actions)}, live {self.agents}"
        self.t += 1
        obs = {a: np.full(1, self.t, np.float32) for a in self.agents}
        term = {a: (a == "agent_1" and self.t == 2) or self.t == 4 for a in self.agents}
        out = obs, {a: 1.0 for a in self.agents}, term, {a: False for a in self.agents}, {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not term[a]]
        return out


@pytest.mark.skipif(bool(os.environ.get("AGORA_SERVER")), reason="registers a scenario in this process")
def test_shrinking_agents_list_is_honoured(server):
    scenarios.register("test_dying_v0", _DyingWorld, "a test world where agent_1 dies early")
    owner, alice, bob = (RawClient(server.address) for _ in range(3))
    world = owner.ok({"op": "create", "scenario": "test_dying_v0", "deadline_ms": 5000})["worlds"][0]
    alice.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    bob.ok({"op": "join", "world": world, "seats": ["agent_1"]})
    for _ in range(2):
        alice.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
        dead = bob.request({"op": "act", "world": world, "actions": {"agent_1": 1}})
        alice.recv()
    assert dead["terminated"]["agent_1"] and dead["agents"] == ["agent_0"]
    # bob's agent is dead: alice is no longer waited for bob (no 5 s deadline), and bob's act waits for the step.
    start = time.monotonic()
    bob_id = bob.send({"op": "act", "world": world, "actions": {"agent_1": 0}})
    tick3 = alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
    waiting = bob.recv()
    assert time.monotonic() - start < 1.0 and tick3["tick"] == 3
    assert waiting["id"] == bob_id and waiting["active"] == {"agent_1": False} and waiting["rewards"]["agent_1"] == 0
    final = alice.request({"op": "act", "world": world, "actions": {"agent_0": 1}})
    assert final["episode_over"] and final["tick"] == 0 and final["agents"] == ["agent_0", "agent_1"]
