"""What one client may cost the server: loop time per request and memory per connection are bounded.

Orderings, not timings: a bystander's ping sent after a large create is answered before that create's reply, because
the create is built a chunk at a time between other clients' requests.
"""

from __future__ import annotations

import time

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
    """Its requests are all read and served; the replies past max_unread_bytes are dropped, the others kept."""
    server = make_server(max_unread_bytes=4 << 20)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, 1)  # this client reads nothing and buffers as little as libzmq lets it
    socket.setsockopt(zmq.RCVBUF, 4096)
    socket.connect(server.address)
    socket.send_multipart(pack({"op": "hello", "id": 1}))
    assert socket.poll(10_000)
    secret = unpack(socket.recv_multipart())["secret"]
    socket.send_multipart(
        pack({"op": "create", "id": 2, "scenario": SPREAD, "join": True, "render": True, "secret": secret})
    )
    assert socket.poll(30_000)
    world = unpack(socket.recv_multipart())["worlds"][0]
    sent = 60  # 60 frames of 1.4 MiB: 84 MiB of replies nobody reads
    for i in range(sent):
        socket.send_multipart(pack({"op": "render", "id": 10 + i, "world": world, "secret": secret}))
    bystander = RawClient(server.address)
    deadline = time.monotonic() + 60
    while server.stats["requests"] < sent + 3:  # the server read every request it was sent (none blocked it)
        assert time.monotonic() < deadline, (sent, server.stats)
        time.sleep(0.05)
    assert bystander.request({"op": "ping"})["op"] == "pong"
    assert server.delivery.dropped > 0, "the replies past the bound were kept"
    received = 0
    while socket.poll(500):
        assert unpack(socket.recv_multipart())["op"] == "frame"
        received += 1
    assert 0 < received <= sent - server.delivery.dropped
    socket.close()


def test_a_frame_over_the_limit_costs_only_the_senders_connection(make_server):
    server = make_server(max_message_bytes=1 << 16)
    sender, bystander = RawClient(server.address, timeout_s=1), RawClient(server.address)
    sender.send_frames([pack({"op": "ping", "id": 1})[0], b"\0" * (4 << 20)])  # one frame of 4 MiB
    with pytest.raises(TimeoutError):
        sender.recv(timeout_ms=300)
    assert bystander.request({"op": "ping"})["op"] == "pong"
    assert server.stats["requests"] == 3, "the oversized message never reached the loop"  # two hellos, a ping


def test_the_turn_that_registers_a_large_create_builds_nothing(server, monkeypatch):
    """The last turn of a large create registered every world at once (a World each, its spaces, its first
    observations): ~1 s of loop for 512 mpe2 copies. Each chunk now builds its worlds whole; registering only names
    them."""
    from agora_marl.envserver import creation
    from agora_marl.envserver.world import World

    made, made_while_registering = [], []
    post_init, register = World.__post_init__, creation._register

    def counting_post_init(self):
        made.append(self)
        post_init(self)

    def counting_register(*args):
        before = len(made)
        reply = register(*args)
        made_while_registering.append(len(made) - before)
        return reply

    monkeypatch.setattr(World, "__post_init__", counting_post_init)
    monkeypatch.setattr(creation, "_register", counting_register)
    client = RawClient(server.address, timeout_s=60)
    created = client.ok({"op": "create", "scenario": SPREAD, "copies": 3 * CREATE_CHUNK, "join": True})
    assert len(created["worlds"]) == len(made) == 3 * CREATE_CHUNK and made_while_registering == [0]
