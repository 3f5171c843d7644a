"""How sessions end: a clean close (``bye``) releases at once; a dead client's pending work does not keep its session;
a flood of long keep-alives pins nothing and leaves room for the operator; a large create keeps its own session; a
burst of stop signals stops a busy server; the operator file is the server's alone and goes with it."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from agora_marl import scenarios
from agora_marl.agents import AgentClient
from agora_marl.envserver.creation import CREATE_CHUNK
from agora_marl.envserver.protocol.connection import operator_file, write_operator_file
from tests.conftest import EXTERNAL_SERVER
from tests.procs import wait_for_connection_file
from tests.rawwire import RawClient

pytestmark = pytest.mark.skipif(bool(EXTERNAL_SERVER), reason="needs servers of its own")
SPREAD = "mpe2.simple_spread_v3:parallel_env"


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_bye_releases_at_once_and_says_so(make_server, caplog):
    server = make_server(heartbeat_timeout_s=300.0)
    operator = RawClient(server.address, hello=False)
    operator.secret = operator.ok({"op": "hello", "operator": server.operator_secret})["secret"]
    leaver, other = RawClient(server.address), RawClient(server.address)
    alone = leaver.ok({"op": "create", "scenario": SPREAD, "join": True})["worlds"][0]
    shared = leaver.ok({"op": "create", "scenario": SPREAD, "deadline_ms": 60_000})["worlds"][0]
    leaver.ok({"op": "join", "world": shared, "seats": ["agent_0"]})
    other.ok({"op": "join", "world": shared, "seats": ["agent_1", "agent_2"]})
    waiting = other.send({"op": "act", "world": shared, "actions": {"agent_1": 0, "agent_2": 0}})
    with caplog.at_level(logging.INFO, logger="agora.server"):
        bye = leaver.ok({"op": "bye"})
    assert bye["seats"] == 4 and bye["closed"] == 1
    assert "said bye" in caplog.text and "silent" not in caplog.text
    listed = {w["world"]: w for w in operator.ok({"op": "list"})["worlds"]}
    assert alone not in listed, "the world nobody else plays in closed at once"
    assert listed[shared]["seats"]["agent_0"] == "free", "the leaver's seat is free, not lost"
    assert other.recv()["id"] == waiting, "the other holder's act no longer waits for the leaver's seat"
    assert leaver.request({"op": "list"})["code"] == "no_session"
    with AgentClient(server.address) as client:  # the client library says bye when it closes
        client.create(SPREAD, join=True)
        assert len(server.sessions) == 3
    assert len(server.sessions) == 2


def test_a_dead_clients_waiting_act_does_not_keep_its_session(make_server):
    """hello, create worlds, join a seat of one, act (it waits for the other seats), close the socket: the waiting
    act kept the session, and its worlds, forever."""
    server = make_server(heartbeat_timeout_s=0.5)
    client = RawClient(server.address)
    worlds = client.ok({"op": "create", "scenario": SPREAD, "copies": 4})["worlds"]
    client.ok({"op": "join", "world": worlds[0], "seats": ["agent_0"]})
    client.send({"op": "act", "world": worlds[0], "actions": {"agent_0": 1}})
    time.sleep(0.2)
    client.close()
    _wait_until(lambda: not server.worlds and not server.sessions, 5.0, "the dead session and its worlds stayed")


def test_a_live_client_waiting_for_its_world_to_start_keeps_its_session(make_server):
    server = make_server(heartbeat_timeout_s=0.5)
    client = RawClient(server.address)
    world = client.ok({"op": "create", "scenario": SPREAD})["worlds"][0]
    client.ok({"op": "join", "world": world, "seats": ["agent_0"]})
    acted = client.send({"op": "act", "world": world, "actions": {"agent_0": 1}})
    time.sleep(1.5)  # three heartbeat timeouts: the act waits for the world to start, its connection is open
    latecomer = RawClient(server.address)
    latecomer.ok({"op": "join", "world": world, "seats": ["agent_1", "agent_2"]})
    latecomer.ok({"op": "act", "world": world, "actions": {"agent_1": 0, "agent_2": 0}})
    reply = client.recv()
    assert reply["id"] == acted and reply["op"] == "step"


def test_a_flood_of_long_keep_alives_pins_nothing_and_leaves_room_for_the_operator(make_server):
    server = make_server(max_sessions=4, heartbeat_timeout_s=0.5, max_keep_alive_s=600.0)
    flood = [RawClient(server.address, hello=False) for _ in range(4)]
    for client in flood:
        assert client.ok({"op": "hello", "keep_alive_s": 600})["keep_alive_s"] == 600
    newcomer = RawClient(server.address, hello=False)
    assert newcomer.request({"op": "hello"})["code"] == "busy"
    operator = RawClient(server.address, hello=False)
    assert operator.ok({"op": "hello", "operator": server.operator_secret})["operator"] is True
    # Sessions that hold nothing have the heartbeat timeout, whatever keep-alive they were granted.
    _wait_until(lambda: newcomer.request({"op": "hello"})["op"] == "welcome", 5.0, "the flood kept newcomers out")


def test_a_large_create_keeps_its_session_while_it_is_built(make_server, monkeypatch):
    """A create that outlasted the heartbeat timeout lost its own session: no_session once every copy was built."""
    make_env = scenarios.make_env

    def slow(name, config, allowed):
        time.sleep(0.02)
        return make_env(name, config, allowed)

    monkeypatch.setattr(scenarios, "make_env", slow)
    server = make_server(heartbeat_timeout_s=0.3)
    client = RawClient(server.address, timeout_s=60)
    created = client.request({"op": "create", "scenario": SPREAD, "copies": 4 * CREATE_CHUNK})  # ~1.3 s
    assert created["op"] == "created" and len(created["worlds"]) == 4 * CREATE_CHUNK, created


_BUSY_SCENARIO = """
import time
from mpe2 import simple_spread_v3
from pettingzoo.utils.wrappers import BaseParallelWrapper

class Slow(BaseParallelWrapper):
    def step(self, actions):
        time.sleep(0.5)
        return super().step(actions)

def parallel_env(**config):
    return Slow(simple_spread_v3.parallel_env(**config))
"""


def test_a_burst_of_stop_signals_stops_a_busy_server(tmp_path):
    """agora serve set a threading.Event from its SIGTERM handler: a second signal arriving while the first handler
    held the Event's lock waited for it forever, and the server ignored every later signal."""
    (tmp_path / "slow_world.py").write_text(_BUSY_SCENARIO)
    addr_file = tmp_path / "server.json"
    command = [sys.executable, "-m", "agora_marl.envserver", "--bind", "tcp://127.0.0.1:0", "--addr-file"]
    command += [str(addr_file), "--allow", "slow_world", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=env)
    try:
        wait_for_connection_file(addr_file, proc)
        address = json.loads(addr_file.read_text())["addresses"][0]
        client = RawClient(address, timeout_s=30)
        world = client.ok({"op": "create", "scenario": "slow_world:parallel_env", "join": True})["worlds"][0]
        client.send({"op": "step_batch", "worlds": [world], "actions": {f"agent_{i}": [0] for i in range(3)}})
        time.sleep(0.1)  # the loop is busy in a step of half a second
        burst_until = time.monotonic() + 1.0  # signals back to back while the loop steps, then stops
        while time.monotonic() < burst_until and proc.poll() is None:
            for _ in range(1000):
                os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait(10)


def test_the_operator_file_is_created_with_its_mode_and_goes_with_its_server(tmp_path):
    planted = tmp_path / "operator"
    (tmp_path / "operator.tmp").write_text("planted")
    os.chmod(tmp_path / "operator.tmp", 0o644)
    write_operator_file(planted, "s3cret")
    assert stat.S_IMODE(os.stat(planted).st_mode) == 0o600 and planted.read_text().strip() == "s3cret"

    addr_file = tmp_path / "server.json"
    command = [sys.executable, "-m", "agora_marl.envserver", "--bind", "tcp://127.0.0.1:0", "--addr-file"]
    proc = subprocess.Popen([*command, str(addr_file)], stderr=subprocess.PIPE)
    try:
        wait_for_connection_file(addr_file, proc)
        secret_file = operator_file(json.loads(addr_file.read_text())["addresses"][0])
        assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not secret_file.exists(), "a stopped server's operator file stayed behind"
    finally:
        proc.kill()
        proc.wait(10)
