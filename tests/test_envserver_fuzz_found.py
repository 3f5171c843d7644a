"""What bench/fuzz_server.py found: server memory that a client could make grow without a bound, and the bounds now.

Each test reproduces one finding against a real server process (its RSS is its own) and checks the bound
docs/security.md states.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
import zmq

from agora_marl.envserver.process import ServerProcesses
from agora_marl.envserver.protocol import pack, unpack, vocabulary
from tests.fuzzing import SPREAD, ZmtpPeer
from tests.rawwire import RawClient

pytestmark = pytest.mark.slow
MIB = 1 << 20


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _settled_rss_mib(pid: int, seconds: float = 20.0) -> float:
    """The server's RSS once it has stopped growing for a second (or after ``seconds``)."""
    last, steady, deadline = _rss_mib(pid), 0, time.monotonic() + seconds
    while steady < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _rss_mib(pid)
        steady = steady + 1 if now <= last else 0
        last = max(last, now)
    return last


@pytest.fixture
def server_process():
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=["--log-level=WARNING"]) as servers:
        yield servers.addresses[0], servers.pids[0]


@pytest.fixture
def small_messages():
    """A server process whose messages may be at most 64 KiB."""
    args = ["--log-level=WARNING", f"--max-message-bytes={64 << 10}"]
    with ServerProcesses(binds=["tcp://127.0.0.1:0"], server_args=args) as servers:
        yield servers.addresses[0], servers.pids[0]


def test_an_unfinished_multipart_message_is_cut_off_at_the_message_limit(small_messages) -> None:
    """libzmq keeps the frames of a message still arriving out of every count: 2 MiB of empty frames cost a server
    64 MiB, and more for as long as they came. A connection holding more than max_message_bytes of a message still
    arriving is now closed. The server looks every 10 ms, so what arrives between two looks counts too: empty frames
    cost libzmq 32 bytes of memory per byte on the wire, 16 MiB per half-MiB chunk here, and one to three chunks land
    between looks on a busy machine (CI once saw +45 MiB). 8 MiB would cost 256 MiB: the peak must stay under half of
    that, and the memory must be given back (see docs/security.md)."""
    address, pid = small_messages
    before = peak = _rss_mib(pid)
    peer = ZmtpPeer(address, timeout_s=2.0)
    peer.send(msgpack.packb({"v": vocabulary.PROTOCOL_VERSION, "op": "ping", "id": 1}), more=True)
    sent = 0
    with pytest.raises(OSError):  # the server closed the connection (its kernel stops taking the bytes)
        for _ in range(32):  # up to 16 MiB of empty frames, never the last one
            peer.send_raw(ZmtpPeer.empty_frames(MIB // 2))
            sent += 1
            peak = max(peak, _rss_mib(pid))
    peer.close()
    # the kernel's buffers take a few chunks more after the close (4 to 5 sent in all, seen under load)
    assert sent < 16, f"the connection was closed only after {sent / 2:.1f} MiB of a 64 KiB-limited message"
    assert RawClient(address).request({"op": "ping"})["op"] == "pong"  # meanwhile the server serves everyone else
    assert peak - before < 128, f"an unfinished message made the server's RSS grow by {peak - before:.0f} MiB"
    grown = _settled_rss_mib(pid) - before
    assert grown < 8, f"the closed connection's frames were not given back: {grown:.0f} MiB"


def test_clients_that_never_read_their_replies_cost_the_server_little_memory(server_process) -> None:
    """Unread replies were counted (64 per connection), not weighed: 150 renders never read cost ~93-99 MiB per
    connection. They are weighed now: at most max_unread_bytes (8 MiB) per client."""
    address, pid = server_process
    clients, steps = 3, 150
    before = _rss_mib(pid)
    sockets, worlds = [], []
    for _ in range(clients):
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 1)  # read as little as a client can, so that the server's own queue fills
        socket.setsockopt(zmq.RCVBUF, 4096)
        socket.connect(address)
        secret = _ask(socket, {"op": "hello"})["secret"]
        create = {"op": "create", "scenario": SPREAD, "join": True, "render": True, "public": True, "seed": 0}
        worlds.append(_ask(socket, {**create, "secret": secret})["worlds"][0])
        act = {"op": "act", "world": worlds[-1], "actions": {f"agent_{i}": 1 for i in range(3)}, "secret": secret}
        for i in range(steps):  # every render follows a step, so every frame is a new picture
            socket.send_multipart(pack({"v": vocabulary.PROTOCOL_VERSION, "id": 2 * i, **act}))
            render = {"op": "render", "world": worlds[-1], "secret": secret}
            socket.send_multipart(pack({"v": vocabulary.PROTOCOL_VERSION, "id": 2 * i + 1, **render}))
        sockets.append(socket)

    watcher, deadline = RawClient(address), time.monotonic() + 120
    while time.monotonic() < deadline:  # until every world took its steps (the public worlds are in list)
        listed = {w["world"]: w for w in watcher.ok({"op": "list"})["worlds"]}
        if all(w in listed and listed[w]["episode"] * 25 + listed[w]["tick"] >= steps for w in worlds):
            break
        time.sleep(0.2)
    grown = _settled_rss_mib(pid) - before
    assert watcher.request({"op": "ping"})["op"] == "pong"
    for socket in sockets:
        socket.close(linger=0)
    assert grown < 64, f"{clients} clients that never read made the server's RSS grow by {grown:.0f} MiB"


def _ask(socket: zmq.Socket, message: dict) -> dict:
    socket.send_multipart(pack({"v": vocabulary.PROTOCOL_VERSION, "id": 1, **message}))
    assert socket.poll(10_000), f"no reply to {message['op']}"
    reply = unpack(socket.recv_multipart())
    assert reply["op"] != vocabulary.ERROR_OP, reply
    return reply
