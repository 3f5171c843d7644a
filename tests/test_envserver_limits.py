"""What one client may cost the server: loop time per request and memory per connection are bounded.

Orderings, not timings: a bystander's ping sent after a large create is answered before that create's reply, because
the create is built a chunk at a time between other clients' requests.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from agora_marl import scenarios
from agora_marl.envserver.creation import CREATE_CHUNK
from agora_marl.envserver.protocol import pack, unpack
from tests.rawwire import RawClient

SPREAD = "mpe2.simple_spread_v3:parallel_env"


def _replies(client: RawClient, count: int, timeout_ms: int = 30_000) -> list[dict]:
    return [client.recv(timeout_ms) for _ in range(count)]


def test_a_large_create_lets_the_others_through_between_its_chunks(server):
    creator, bystander = RawClient(server.address, timeout_s=60), RawClient(server.address)
    copies = 12 * CREATE_CHUNK
    request_id = creator.send({"op": "create", "scenario": SPREAD, "seed": 0, "copies": copies})
    time.sleep(0.05)  # the create has started
    order = []
    for _ in range(3):
        assert bystander.request({"op": "ping"})["op"] == "pong"
        order.append("ping" if not creator.socket.poll(0) else "created")
    created = creator.recv(60_000)
    assert created["id"] == request_id and created["op"] == "created" and len(created["worlds"]) == copies
    assert order[0] == "ping", "a bystander's ping waited for the whole create"
    assert created["worlds"] == list(range(created["worlds"][0], created["worlds"][0] + copies))
    listing = {w["world"] for w in creator.ok({"op": "list"})["worlds"]}
    assert set(created["worlds"]) <= listing


def test_worlds_being_built_count_against_the_quota(make_server):
    server = make_server(max_worlds_per_client=3 * CREATE_CHUNK)
    client = RawClient(server.address, timeout_s=60)
    first = client.send({"op": "create", "scenario": SPREAD, "copies": 2 * CREATE_CHUNK})
    second = client.send({"op": "create", "scenario": SPREAD, "copies": 2 * CREATE_CHUNK})
    replies = {r["id"]: r for r in _replies(client, 2)}
    assert replies[first]["op"] == "created" and replies[second]["code"] == "too_many_worlds"


def test_a_build_that_fails_midway_registers_nothing_and_closes_what_it_built(server, monkeypatch):
    built, closed = [], []
    make_env = scenarios.make_env

    def failing(name, config, allowed):
        if len(built) == 2 * CREATE_CHUNK + 3:
            raise SystemExit("the 36th copy's constructor exits")
        env = make_env(name, config, allowed)
        original_close = env.close
        env.close = lambda: (closed.append(env), original_close())
        built.append(env)
        return env

    monkeypatch.setattr(scenarios, "make_env", failing)
    client = RawClient(server.address, timeout_s=60)
    reply = client.request({"op": "create", "scenario": SPREAD, "copies": 4 * CREATE_CHUNK})
    assert reply["code"] == "scenario_error" and "SystemExit" in reply["message"]
    assert len(closed) == len(built) == 2 * CREATE_CHUNK + 3
    assert client.ok({"op": "list"})["worlds"] == []
    assert not server.worlds and server.pending_worlds == 0


def test_a_client_that_never_reads_its_replies_costs_a_bounded_queue(make_server):
    server = make_server(max_queued_replies=8)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, 1)  # this client reads nothing and buffers as little as libzmq lets it
    socket.setsockopt(zmq.RCVBUF, 4096)
    socket.connect(server.address)
    blob = np.zeros(1 << 16, np.uint8)  # every pong is small, but each request is 64 KiB: the server must keep up
    sent, deadline = 0, time.monotonic() + 20
    while sent < 2000 and time.monotonic() < deadline:  # never blocks: a full queue is the back-pressure we want
        try:
            socket.send_multipart(pack({"op": "ping", "id": sent + 1, "pad": blob}), flags=zmq.NOBLOCK, copy=False)
            sent += 1
        except zmq.Again:
            time.sleep(0.01)
    assert sent > 200, "the server stopped reading a client that does not read"
    bystander = RawClient(server.address)
    deadline = time.monotonic() + 30
    while server.stats["requests"] < sent:  # the server read every request it was sent (none blocked it)
        assert time.monotonic() < deadline, (sent, server.stats)
        time.sleep(0.05)
    assert bystander.request({"op": "ping"})["op"] == "pong"
    received = 0
    while socket.poll(200):
        unpack(socket.recv_multipart())
        received += 1
    assert received < sent, "the replies nobody read were dropped past the queue, not kept"
    socket.close()


def test_a_frame_over_the_limit_costs_only_the_senders_connection(make_server):
    server = make_server(max_message_bytes=1 << 16)
    sender, bystander = RawClient(server.address, timeout_s=1), RawClient(server.address)
    sender.send_frames([pack({"op": "ping", "id": 1})[0], b"\0" * (4 << 20)])  # one frame of 4 MiB
    with pytest.raises(TimeoutError):
        sender.recv(timeout_ms=300)
    assert bystander.request({"op": "ping"})["op"] == "pong"
    assert server.stats["requests"] == 3, "the oversized message never reached the loop"  # two hellos, a ping
